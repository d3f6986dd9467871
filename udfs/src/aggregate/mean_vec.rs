//! `mean_vec(v)`: the element-wise mean of vectors over a group, e.g. the mean activation per layer.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature, Volatility,
};

use super::group_state::{Groups, MeanVector, Single, VectorTerm};
use crate::doc::VECTOR_AGGREGATES;
use crate::eval::coerce_one_vector;
use crate::vector::float32_vector_type;

/// Element-wise mean of the vectors of a group.
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
         NULL rows are skipped, and an empty group gives NULL.",
        "mean_vec(v)",
    )
    .with_sql_example(
        r#"```sql
> SELECT layer, mean_vec(base) FROM acts GROUP BY layer;
```"#,
    )
    .with_argument("v", "A vector column.")
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
        coerce_one_vector(self.name(), arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(float32_vector_type(arg_types))
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
    MeanVector::new("mean_vec", VectorTerm::Value, args.return_type().clone())
}

#[cfg(test)]
mod tests {
    use super::super::group_state::{GroupState, MeanVector, VectorTerm};
    use crate::testing::{f32_list, fixed_f16};
    use crate::vector::float32_vector_type;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float32Type;

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
