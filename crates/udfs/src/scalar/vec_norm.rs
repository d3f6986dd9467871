//! `vec_norm(v)`: the size of one activation, ‖v‖₂, to compare how loud base and organism are.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{coerce_one_vector, unary_f64};
use diffsql_kernels::dense::norm;

/// Euclidean norm of a vector.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VecNorm {
    signature: Signature,
}

impl Default for VecNorm {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(VECTOR_FUNCTIONS, "Euclidean norm ‖v‖₂ of a vector.", "vec_norm(v)")
        .with_sql_example(
            r#"```sql
> SELECT vec_norm([3.0, 4.0]);
5.0
> SELECT layer, avg(vec_norm(base)), avg(vec_norm(ft)) FROM acts GROUP BY layer;
```"#,
        )
        .with_argument("v", "A vector.")
        .build()
});

impl ScalarUDFImpl for VecNorm {
    fn name(&self) -> &str {
        "vec_norm"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_one_vector(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        unary_f64(self.name(), &args.args, |v| Some(norm(v)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval_f64, f32_list, fixed_bf16};
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn norms_of_known_vectors() {
        let udf = ScalarUDF::from(super::VecNorm::default());
        let out = eval_f64(&udf, vec![f32_list(&[Some(&[3.0, 4.0]), Some(&[]), None])]);
        assert_eq!(out, vec![Some(5.0), Some(0.0), None]);
        let ones = vec![1.0f32; 1152];
        let out = eval_f64(&udf, vec![fixed_bf16(&[&ones])]);
        assert!((out[0].unwrap() - 1152f64.sqrt()).abs() < 1e-9);
    }
}
