//! `cosine_sim(a, b)`: whether the finetune turned an activation, independent of how much it scaled it.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_f64, coerce_two_vectors};
use diffsql_kernels::dense::cosine;

/// Cosine similarity of two vectors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CosineSim {
    signature: Signature,
}

impl Default for CosineSim {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "Cosine similarity a·b / (‖a‖‖b‖) of two vectors of equal length; NULL when either is all zeros.",
        "cosine_sim(a, b)",
    )
    .with_sql_example(
        r#"```sql
> SELECT cosine_sim([1.0, 0.0], [0.0, 2.0]);
0.0
> SELECT layer, avg(1 - cosine_sim(base, ft)) AS cosine_distance FROM acts GROUP BY layer;
```"#,
    )
    .with_argument("a", "A vector.")
    .with_argument("b", "A vector of the same length.")
    .build()
});

impl ScalarUDFImpl for CosineSim {
    fn name(&self) -> &str {
        "cosine_sim"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_two_vectors(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        binary_f64(self.name(), &args.args, args.number_rows, cosine)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval_f64, fixed_f16, fixed_f32};
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn orthogonal_parallel_antiparallel_and_zero() {
        let udf = ScalarUDF::from(super::CosineSim::default());
        let out = eval_f64(
            &udf,
            vec![
                fixed_f32(&[&[1.0, 0.0], &[1.0, 1.0], &[1.0, 2.0], &[0.0, 0.0]]),
                fixed_f16(&[&[0.0, 5.0], &[2.0, 2.0], &[-1.0, -2.0], &[1.0, 0.0]]),
            ],
        );
        assert_eq!(out[0], Some(0.0));
        assert!((out[1].unwrap() - 1.0).abs() < 1e-7);
        assert!((out[2].unwrap() + 1.0).abs() < 1e-7);
        assert_eq!(out[3], None);
    }
}
