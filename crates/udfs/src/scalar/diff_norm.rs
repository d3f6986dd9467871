//! `diff_norm(base, ft)`: how far the finetune moved one token's activation, ‖ft − base‖₂.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_f64, coerce_two_vectors};
use diffsql_kernels::dense::distance;

/// Euclidean norm of the difference of two vectors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DiffNorm {
    signature: Signature,
}

impl Default for DiffNorm {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "Euclidean norm of the difference ft − base of two vectors of equal length.",
        "diff_norm(base, ft)",
    )
    .with_sql_example(
        r#"```sql
> SELECT diff_norm([0.0, 0.0], [3.0, 4.0]);
5.0
> SELECT layer, avg(diff_norm(base, ft)) FROM acts GROUP BY layer;
```"#,
    )
    .with_argument("base", "Vector of the base model.")
    .with_argument("ft", "Vector of the finetuned model, same length.")
    .with_related_udf("normdiff")
    .build()
});

impl ScalarUDFImpl for DiffNorm {
    fn name(&self) -> &str {
        "diff_norm"
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
        binary_f64(self.name(), &args.args, args.number_rows, |a, b| Some(distance(a, b)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval_f64, f32_list, fixed_bf16};
    use datafusion::logical_expr::ScalarUDF;

    fn udf() -> ScalarUDF {
        ScalarUDF::from(super::DiffNorm::default())
    }

    #[test]
    fn three_four_five() {
        let out = eval_f64(
            &udf(),
            vec![
                f32_list(&[Some(&[0.0, 0.0]), None]),
                f32_list(&[Some(&[3.0, 4.0]), Some(&[1.0, 1.0])]),
            ],
        );
        assert_eq!(out, vec![Some(5.0), None]);
    }

    #[test]
    fn bfloat16_is_decoded() {
        let out = eval_f64(&udf(), vec![fixed_bf16(&[&[1.0, 2.0]]), fixed_bf16(&[&[1.0, 4.0]])]);
        assert_eq!(out, vec![Some(2.0)]);
    }

    #[test]
    fn length_mismatch_names_function_and_lengths() {
        let err = crate::testing::eval(
            &udf(),
            vec![f32_list(&[Some(&[1.0, 2.0])]), f32_list(&[Some(&[1.0, 2.0, 3.0])])],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("diff_norm: vectors have different lengths: 2 and 3"),
            "{err}"
        );
    }
}
