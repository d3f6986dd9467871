//! `to_float32(v)`: shows a bfloat16 or float16 vector as readable numbers (bf16 is stored as raw bits).

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::doc::VECTOR_FUNCTIONS;
use crate::eval::{coerce_one_vector, unary_vector};
use crate::vector::float32_vector_type;

/// Decodes a vector of any accepted encoding to float32.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToFloat32 {
    signature: Signature,
}

impl Default for ToFloat32 {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_FUNCTIONS,
        "Decodes a vector (float32, float16 or bfloat16 bits in uint16) to float32 values.",
        "to_float32(v)",
    )
    .with_sql_example(
        r#"```sql
> SELECT to_float32(act) FROM activations LIMIT 1;
```"#,
    )
    .with_argument("v", "A vector.")
    .build()
});

impl ScalarUDFImpl for ToFloat32 {
    fn name(&self) -> &str {
        "to_float32"
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

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let return_type = args.return_type().clone();
        unary_vector(self.name(), &args.args, &return_type, |v, out| out.extend_from_slice(v))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{eval, fixed_bf16};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float32Type;
    use datafusion::logical_expr::ScalarUDF;

    #[test]
    fn decodes_bfloat16_bits() {
        let udf = ScalarUDF::from(super::ToFloat32::default());
        let out = eval(&udf, vec![fixed_bf16(&[&[1.0, -0.5, 3.0]])]).unwrap();
        let values = out
            .as_fixed_size_list()
            .values()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        assert_eq!(values, vec![1.0, -0.5, 3.0]);
    }
}
