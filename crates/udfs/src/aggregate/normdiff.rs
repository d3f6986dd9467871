//! `normdiff(base, ft)`: the seed's `normdiff` method as one aggregate, mean ‖ft − base‖₂ over a group.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature, Volatility,
};

use super::group_state::{Groups, MeanOfPairs, Single};
use crate::doc::VECTOR_AGGREGATES;
use crate::eval::coerce_two_vectors;
use diffsql_kernels::dense::distance;

/// Mean Euclidean norm of ft − base over the rows of a group.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NormDiff {
    signature: Signature,
}

impl Default for NormDiff {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_AGGREGATES,
        "Mean of ‖ft − base‖₂ over the rows of a group; rows where either vector is NULL are skipped. \
         Equal to avg(diff_norm(base, ft)).",
        "normdiff(base, ft)",
    )
    .with_sql_example(
        r#"```sql
> SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer;
```"#,
    )
    .with_argument("base", "Vector of the base model.")
    .with_argument("ft", "Vector of the finetuned model, same length.")
    .with_related_udf("diff_norm")
    .build()
});

fn state() -> MeanOfPairs {
    MeanOfPairs::new("normdiff", distance)
}

impl AggregateUDFImpl for NormDiff {
    fn name(&self) -> &str {
        "normdiff"
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

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Single(state())))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(MeanOfPairs::state_fields(args.name))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups(state())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use super::super::group_state::{GroupState, Groups};
    use super::state;
    use crate::testing::{f32_list, fixed_bf16};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

    #[test]
    fn groups_and_merged_partials_agree() {
        // group 0: distances 5 and 1; group 1: distance 2; a null row is skipped.
        let base = f32_list(&[Some(&[0.0, 0.0]), Some(&[1.0, 1.0]), Some(&[0.0, 0.0]), None]);
        let ft = f32_list(&[
            Some(&[3.0, 4.0]),
            Some(&[1.0, 2.0]),
            Some(&[2.0, 0.0]),
            Some(&[9.0, 9.0]),
        ]);
        let mut whole = Groups(state());
        whole
            .update_batch(&[base.clone(), ft.clone()], &[0, 0, 1, 1], None, 2)
            .unwrap();
        let out = whole.evaluate(EmitTo::All).unwrap();
        assert_eq!(out.as_primitive::<Float64Type>().values().to_vec(), vec![3.0, 2.0]);

        // The same rows split over two partial accumulators, merged.
        let mut left = state();
        left.update(&[base.slice(0, 1), ft.slice(0, 1)], &[0], None, 1).unwrap();
        let mut right = state();
        right
            .update(&[base.slice(1, 3), ft.slice(1, 3)], &[0, 1, 1], None, 2)
            .unwrap();
        let mut merged = state();
        merged.merge(&left.state(0..1).unwrap(), &[0], 1).unwrap();
        merged.merge(&right.state(0..2).unwrap(), &[0, 1], 2).unwrap();
        let out = merged.evaluate(0..2).unwrap();
        assert_eq!(out.as_primitive::<Float64Type>().values().to_vec(), vec![3.0, 2.0]);
    }

    #[test]
    fn empty_group_is_null_and_bf16_is_read() {
        let mut acc = Groups(state());
        let base = fixed_bf16(&[&[1.0, 0.0]]);
        let ft = fixed_bf16(&[&[1.0, 2.0]]);
        acc.update_batch(&[base, ft], &[1], None, 2).unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_primitive::<Float64Type>();
        assert!(out.is_null(0));
        assert_eq!(out.value(1), 2.0);
    }
}
