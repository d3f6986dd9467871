//! `kl_div(logp, logq)`: KL(p‖q) between two next-token distributions given as log-probabilities.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_f64, coerce_two_vectors};
use diffsql_kernels::dense::kl;

/// Kullback–Leibler divergence from two log-probability vectors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KlDiv {
    signature: Signature,
}

impl Default for KlDiv {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "KL(p‖q) = Σ p·(log p − log q), in nats, from two vectors of natural-log probabilities over the same \
         outcomes. Outcomes with p = 0 (log p = -inf) contribute nothing; p > 0 where q = 0 gives +inf.",
        "kl_div(logp, logq)",
    )
    .with_sql_example(
        r#"```sql
> SELECT kl_div([ln(0.5), ln(0.5)], [ln(0.25), ln(0.75)]);
0.14384103622589045
```"#,
    )
    .with_argument("logp", "Log-probabilities of p (e.g. the finetuned model's).")
    .with_argument("logq", "Log-probabilities of q (e.g. the base model's), same length.")
    .build()
});

impl ScalarUDFImpl for KlDiv {
    fn name(&self) -> &str {
        "kl_div"
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
        binary_f64(self.name(), &args.args, args.number_rows, |p, q| Some(kl(p, q)))
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
    fn kl_of_two_coins() {
        let udf = ScalarUDF::from(super::KlDiv::default());
        let ln = |x: f32| x.ln();
        let out = eval_f64(
            &udf,
            vec![
                f32_list(&[Some(&[ln(0.5), ln(0.5)]), Some(&[ln(0.5), ln(0.5)])]),
                f32_list(&[Some(&[ln(0.25), ln(0.75)]), Some(&[ln(0.5), ln(0.5)])]),
            ],
        );
        let expect = 0.5 * (2f64).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((out[0].unwrap() - expect).abs() < 1e-6, "{out:?} vs {expect}");
        assert_eq!(out[1], Some(0.0));
    }
}
