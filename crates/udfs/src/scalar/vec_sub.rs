//! `vec_sub(a, b)`: the difference vector a − b, e.g. `vec_sub(ft, base)` per token, to project or aggregate.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{binary_vector, coerce_two_vectors};
use crate::vector::float32_vector_type;

/// Element-wise difference of two vectors, as float32.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VecSub {
    signature: Signature,
}

impl Default for VecSub {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "Element-wise difference a − b of two vectors of equal length, as a float32 vector \
         (a fixed-size list when both arguments are).",
        "vec_sub(a, b)",
    )
    .with_sql_example(
        r#"```sql
> SELECT vec_sub([3.0, 4.0], [1.0, 1.0]);
[2.0, 3.0]
> SELECT vec_norm(vec_sub(ft, base)) FROM acts LIMIT 3;
```"#,
    )
    .with_argument("a", "A vector.")
    .with_argument("b", "A vector of the same length.")
    .with_related_udf("mean_diff")
    .build()
});

impl ScalarUDFImpl for VecSub {
    fn name(&self) -> &str {
        "vec_sub"
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

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let return_type = args.return_type().clone();
        binary_vector(self.name(), &args.args, args.number_rows, &return_type, |a, b, out| {
            out.extend(a.iter().zip(b).map(|(x, y)| x - y))
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval, f32_list, fixed_bf16, fixed_f32};
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Float32Type};
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn difference_keeps_fixed_size_and_nulls() {
        let udf = ScalarUDF::from(super::VecSub::default());
        let out = eval(&udf, vec![fixed_f32(&[&[3.0, 4.0]]), fixed_bf16(&[&[1.0, 1.5]])]).unwrap();
        assert!(matches!(out.data_type(), DataType::FixedSizeList(_, 2)));
        let values = out
            .as_fixed_size_list()
            .values()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        assert_eq!(values, vec![2.0, 2.5]);

        let out = eval(
            &udf,
            vec![f32_list(&[None, Some(&[1.0])]), f32_list(&[Some(&[1.0]), Some(&[0.5])])],
        )
        .unwrap();
        let list = out.as_list::<i32>();
        assert!(list.is_null(0));
        assert_eq!(list.value(1).as_primitive::<Float32Type>().values().to_vec(), vec![0.5]);
    }
}
