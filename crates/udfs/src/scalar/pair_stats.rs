//! `pair_stats(base, ft)`: the per-token statistics of a (base, ft) pair at once — ‖ft − base‖₂, cosine
//! distance, ‖base‖, ‖ft‖ — decoding each vector once instead of once per function.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_f64_fields, coerce_two_vectors, f64_struct_type};
use diffsql_kernels::dense::pair_sums;

/// The fields of the struct, in order.
const FIELDS: [&str; 4] = ["norm_diff", "cos_dist", "base_norm", "ft_norm"];

/// Norm of the difference, cosine distance and both norms of a pair of vectors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PairStats {
    signature: Signature,
}

impl Default for PairStats {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "A struct {norm_diff: ‖ft − base‖₂, cos_dist: 1 − cos(base, ft), base_norm: ‖base‖, ft_norm: ‖ft‖} \
         computed in one pass over the two vectors (cos_dist is NULL when either is all zeros); the whole \
         struct is NULL when either vector is.",
        "pair_stats(base, ft)",
    )
    .with_sql_example(
        r#"```sql
> SELECT pair_stats([3.0, 4.0], [0.0, 0.0])['base_norm'];
5.0
> SELECT layer, avg(s['norm_diff']) FROM (SELECT layer, pair_stats(base, ft) AS s FROM acts) GROUP BY layer;
```"#,
    )
    .with_argument("base", "Vector of the base model.")
    .with_argument("ft", "Vector of the finetuned model, same length.")
    .with_related_udf("diff_norm")
    .with_related_udf("cosine_sim")
    .build()
});

impl ScalarUDFImpl for PairStats {
    fn name(&self) -> &str {
        "pair_stats"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_two_vectors(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(f64_struct_type(&FIELDS))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        binary_f64_fields(self.name(), &args.args, args.number_rows, FIELDS, |base, ft| {
            let [dd, ab, aa, bb] = pair_sums(base, ft);
            // As `cosine_sim`: undefined (NULL) when either vector is all zeros.
            let cos_dist = (aa != 0.0 && bb != 0.0).then(|| 1.0 - ab / (aa.sqrt() * bb.sqrt()));
            [Some(dd.sqrt()), cos_dist, Some(aa.sqrt()), Some(bb.sqrt())]
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval, fixed_bf16, fixed_f32};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn all_four_statistics_and_nulls() {
        let udf = ScalarUDF::from(super::PairStats::default());
        let base = fixed_f32(&[&[3.0, 4.0], &[0.0, 0.0], &[1.0, 0.0]]);
        let ft = fixed_f32(&[&[3.0, 4.0], &[1.0, 0.0], &[0.0, 2.0]]);
        let out = eval(&udf, vec![base, ft]).unwrap();
        let s = out.as_struct();
        let col = |name: &str| s.column_by_name(name).unwrap().as_primitive::<Float64Type>().clone();
        let (nd, cd, bn, fnorm) = (col("norm_diff"), col("cos_dist"), col("base_norm"), col("ft_norm"));
        // Identical vectors: no difference, cosine distance 0.
        assert_eq!(
            (nd.value(0), cd.value(0), bn.value(0), fnorm.value(0)),
            (0.0, 0.0, 5.0, 5.0)
        );
        // A zero base: cosine distance undefined (NULL), the rest defined.
        assert_eq!((nd.value(1), bn.value(1), fnorm.value(1)), (1.0, 0.0, 1.0));
        assert!(cd.is_null(1));
        // Orthogonal: cosine distance 1, ‖(−1, 2)‖ = √5.
        assert!((nd.value(2) - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cd.value(2), 1.0);
        // bfloat16 vectors decode the same way.
        let out = eval(&udf, vec![fixed_bf16(&[&[3.0, 4.0]]), fixed_bf16(&[&[0.0, 0.0]])]).unwrap();
        assert_eq!(out.as_struct().column(2).as_primitive::<Float64Type>().value(0), 5.0);
    }
}
