//! `mean_vec(v [, w])`: the element-wise mean of vectors over a group, e.g. the mean activation per layer,
//! or their mean weighted by a number per row, e.g. per-group means pooled by their token counts.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature, Volatility,
};

use super::group_state::{Groups, MeanVector, Single, VectorTerm};
use crate::doc::VECTOR_AGGREGATES;
use crate::vector::{coerce_vector_arg, float32_vector_type};

/// Element-wise mean of the vectors of a group, optionally weighted.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MeanVec {
    signature: Signature,
}

impl Default for MeanVec {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_AGGREGATES,
        "Element-wise mean of the vectors of a group (summed in float64, returned as float32); \
         with a weight w, Σ w·v / Σ w (weights must be ≥ 0). NULL rows are skipped, and an empty group \
         (or one whose weights sum to 0) gives NULL.",
        "mean_vec(v [, w])",
    )
    .with_sql_example(
        r#"```sql
> SELECT layer, mean_vec(base) FROM acts GROUP BY layer;
> -- per-dataset means pooled into one per layer, each weighted by its token count
> SELECT layer, mean_vec(mean, tokens) FROM (
    SELECT layer, dataset, mean_vec(base) AS mean, count(*) AS tokens FROM acts GROUP BY layer, dataset
  ) GROUP BY layer;
```"#,
    )
    .with_argument("v", "A vector column.")
    .with_argument("w", "Optional: a number per row, ≥ 0 (e.g. a token count).")
    .with_related_udf("mean_diff")
    .build()
});

impl AggregateUDFImpl for MeanVec {
    fn name(&self) -> &str {
        "mean_vec"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [v] => Ok(vec![coerce_vector_arg(self.name(), 1, v)?]),
            [v, w] if w.is_numeric() || *w == DataType::Null => {
                Ok(vec![coerce_vector_arg(self.name(), 1, v)?, DataType::Float64])
            }
            [_, w] => plan_err!("mean_vec: the weight (argument 2) must be a number, got {w}"),
            _ => plan_err!(
                "mean_vec takes a vector and an optional weight, got {} arguments: e.g. mean_vec(base) or mean_vec(mean, tokens)",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // The vector alone decides the type; the weight, when given, is a number.
        Ok(float32_vector_type(arg_types.get(..1).unwrap_or_default()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Single(state(&args))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(MeanVector::state_fields(args.name))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups(state(&args))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

fn state(args: &AccumulatorArgs) -> MeanVector {
    let term = if args.exprs.len() == 2 {
        VectorTerm::Weighted
    } else {
        VectorTerm::Value
    };
    MeanVector::new("mean_vec", term, args.return_type().clone())
}

#[cfg(test)]
mod tests {
    use super::super::group_state::{GroupState, MeanVector, VectorTerm};
    use crate::testing::{f32_list, fixed_f16};
    use crate::vector::float32_vector_type;
    use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
    use datafusion::arrow::datatypes::Float32Type;
    use std::sync::Arc;

    #[test]
    fn mean_per_group_with_fixed_and_variable_lists() {
        let v = fixed_f16(&[&[1.0, 2.0], &[3.0, 4.0], &[10.0, -10.0]]);
        let mut s = MeanVector::new(
            "mean_vec",
            VectorTerm::Value,
            float32_vector_type(&[v.data_type().clone()]),
        );
        s.update(&[v], &[0, 0, 1], None, 3).unwrap();
        let out = s.evaluate(0..3).unwrap();
        let out = out.as_fixed_size_list();
        assert_eq!(
            out.value(0).as_primitive::<Float32Type>().values().to_vec(),
            vec![2.0, 3.0]
        );
        assert_eq!(
            out.value(1).as_primitive::<Float32Type>().values().to_vec(),
            vec![10.0, -10.0]
        );
        assert!(out.is_null(2));
    }

    #[test]
    fn weighted_mean_pools_group_means_by_their_counts() {
        // Groups of 3 rows with mean [1, 2] and 1 row [5, -2] pool to ([3, 6] + [5, -2]) / 4 = [2, 1];
        // a zero-weight row counts for nothing, a NULL weight is skipped, an all-zero group is NULL.
        let v = fixed_f16(&[&[1.0, 2.0], &[5.0, -2.0], &[100.0, 100.0], &[7.0, 7.0], &[9.0, 9.0]]);
        let w: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(3.0),
            Some(1.0),
            Some(0.0),
            None,
            Some(0.0),
        ]));
        let mut s = MeanVector::new(
            "mean_vec",
            VectorTerm::Weighted,
            float32_vector_type(&[v.data_type().clone()]),
        );
        s.update(&[v, w], &[0, 0, 0, 0, 1], None, 2).unwrap();
        let out = s.evaluate(0..2).unwrap();
        let out = out.as_fixed_size_list();
        assert_eq!(
            out.value(0).as_primitive::<Float32Type>().values().to_vec(),
            vec![2.0, 1.0]
        );
        assert!(out.is_null(1));
    }

    #[test]
    fn negative_weights_are_an_error_naming_the_function() {
        let v = fixed_f16(&[&[1.0]]);
        let w: ArrayRef = Arc::new(Float64Array::from(vec![-1.0]));
        let mut s = MeanVector::new(
            "mean_vec",
            VectorTerm::Weighted,
            float32_vector_type(&[v.data_type().clone()]),
        );
        let err = s.update(&[v, w], &[0], None, 1).unwrap_err().to_string();
        assert!(err.contains("mean_vec: weight -1 is negative or not finite"), "{err}");
    }

    #[test]
    fn lists_of_different_lengths_are_an_error() {
        let v = f32_list(&[Some(&[1.0, 2.0]), Some(&[1.0])]);
        let mut s = MeanVector::new(
            "mean_vec",
            VectorTerm::Value,
            float32_vector_type(&[v.data_type().clone()]),
        );
        let err = s.update(&[v], &[0, 0], None, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("mean_vec: vectors have different lengths: 2 and 1"),
            "{err}"
        );
    }
}
