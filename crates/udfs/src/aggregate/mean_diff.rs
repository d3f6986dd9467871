//! `mean_diff(base, ft)`: the mean difference vector over a group, the input of the activation difference lens.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature, Volatility,
};

use super::group_state::{Groups, MeanVector, Single, VectorTerm};
use crate::doc::VECTOR_AGGREGATES;
use crate::eval::coerce_two_vectors;
use crate::vector::float32_vector_type;

/// Element-wise mean of ft − base over the rows of a group.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MeanDiff {
    signature: Signature,
}

impl Default for MeanDiff {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_AGGREGATES,
        "Element-wise mean of ft − base over the rows of a group (summed in float64, returned as float32); \
         rows where either vector is NULL are skipped.",
        "mean_diff(base, ft)",
    )
    .with_sql_example(
        r#"```sql
> SELECT pos, mean_diff(base, ft) FROM acts WHERE layer = 6 AND pos < 5 GROUP BY pos;
```"#,
    )
    .with_argument("base", "Vector of the base model.")
    .with_argument("ft", "Vector of the finetuned model, same length.")
    .with_related_udf("mean_vec")
    .build()
});

impl AggregateUDFImpl for MeanDiff {
    fn name(&self) -> &str {
        "mean_diff"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_two_vectors(self.name(), arg_types)
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
    MeanVector::new("mean_diff", VectorTerm::Difference, args.return_type().clone())
}

#[cfg(test)]
mod tests {
    use super::super::group_state::{GroupState, MeanVector, VectorTerm};
    use crate::testing::{fixed_bf16, fixed_f32};
    use crate::vector::float32_vector_type;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float32Type;

    #[test]
    fn mean_of_differences_survives_a_merge() {
        let base = fixed_f32(&[&[1.0, 1.0], &[0.0, 0.0], &[5.0, 5.0]]);
        let ft = fixed_bf16(&[&[2.0, 3.0], &[4.0, -2.0], &[5.0, 5.0]]);
        let ty = float32_vector_type(&[base.data_type().clone(), ft.data_type().clone()]);
        let mut a = MeanVector::new("mean_diff", VectorTerm::Difference, ty.clone());
        a.update(&[base.slice(0, 1), ft.slice(0, 1)], &[0], None, 1).unwrap();
        let mut b = MeanVector::new("mean_diff", VectorTerm::Difference, ty.clone());
        b.update(&[base.slice(1, 2), ft.slice(1, 2)], &[0, 0], None, 1).unwrap();
        let mut m = MeanVector::new("mean_diff", VectorTerm::Difference, ty);
        m.merge(&a.state(0..1).unwrap(), &[0], 1).unwrap();
        m.merge(&b.state(0..1).unwrap(), &[0], 1).unwrap();
        let out = m.evaluate(0..1).unwrap();
        // ((1,2) + (4,-2) + (0,0)) / 3
        let got = out
            .as_fixed_size_list()
            .value(0)
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        assert_eq!(got, vec![5.0 / 3.0, 0.0]);
    }
}
