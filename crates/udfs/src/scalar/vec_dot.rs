//! `vec_dot(a, b)`: projections, e.g. of an activation onto a mean-difference direction.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_f64, coerce_two_vectors};
use diffsql_kernels::dense::dot;

/// Dot product of two vectors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VecDot {
    signature: Signature,
}

impl Default for VecDot {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "Dot product a·b of two vectors of equal length.",
        "vec_dot(a, b)",
    )
    .with_sql_example(
        r#"```sql
> SELECT vec_dot([1.0, 2.0], [3.0, 4.0]);
11.0
```"#,
    )
    .with_argument("a", "A vector.")
    .with_argument("b", "A vector of the same length.")
    .build()
});

impl ScalarUDFImpl for VecDot {
    fn name(&self) -> &str {
        "vec_dot"
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
        binary_f64(self.name(), &args.args, args.number_rows, |a, b| Some(dot(a, b)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval_f64, f32_list};
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn dot_of_known_vectors_and_nulls() {
        let udf = ScalarUDF::from(super::VecDot::default());
        let out = eval_f64(
            &udf,
            vec![
                f32_list(&[Some(&[1.0, 2.0]), Some(&[1.0])]),
                f32_list(&[Some(&[3.0, 4.0]), None]),
            ],
        );
        assert_eq!(out, vec![Some(11.0), None]);
    }
}
