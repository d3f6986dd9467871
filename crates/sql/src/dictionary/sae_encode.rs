//! `sae_encode(v, name)`: the active latents of an SAE trained on ft − base for a difference vector.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature};
use diffsql_core::config::DictionaryKind;

use super::encode::{code_list_type, coerce_args, encode_sparse, encoding_function, section};
use super::DictionaryRegistry;

encoding_function!(
    /// `sae_encode(v, name)`.
    SaeEncode
);

/// Vector arguments before the name.
const VECTORS: usize = 1;
const SYNTAX: &str = "sae_encode(v, name)";

impl ScalarUDFImpl for SaeEncode {
    fn name(&self) -> &str {
        "sae_encode"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_args(self.name(), SYNTAX, arg_types, VECTORS, &[DataType::Utf8])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(code_list_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        encode_sparse(
            &self.registry,
            self.name(),
            &args,
            VECTORS,
            DictionaryKind::SaeDifference,
        )
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(documentation())
    }
}

/// The function's documentation (`\df`).
pub(super) fn documentation() -> &'static Documentation {
    static DOC: LazyLock<Documentation> = LazyLock::new(|| {
        Documentation::builder(
            section(),
            "The active latents of an SAE trained on ft − base for a difference vector, largest first, as a \
             list of {latent, value}.",
            SYNTAX,
        )
        .with_sql_example(
            "```sql\n> SELECT unnest(sae_encode(vec_sub(ft, base), 'sae_difference_L2')) FROM acts LIMIT 5;\n```",
        )
        .with_argument("v", "A difference vector ft − base.")
        .with_argument(
            "name",
            "A dictionary: 'name', 'organism/name' or 'model/organism/name'.",
        )
        .build()
    });
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dictionary::encode::tests::{function_of, list_of_floats};

    #[test]
    fn it_takes_one_vector_and_a_name() {
        let f = function_of(SaeEncode::new);
        let coerced = f.coerce_types(&[list_of_floats(), DataType::Utf8]).unwrap();
        assert_eq!(coerced.len(), 2);
        let e = f.coerce_types(&[DataType::Utf8]).unwrap_err().to_string();
        assert!(
            e.contains("sae_encode takes 2 arguments, got 1") && e.contains(SYNTAX),
            "{e}"
        );
    }
}
