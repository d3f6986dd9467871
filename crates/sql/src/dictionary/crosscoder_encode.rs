//! `crosscoder_encode(base, ft, name)`: the active latents of a crosscoder for a (base, ft) pair of vectors.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature};
use diffsql_core::config::DictionaryKind;

use super::encode::{code_list_type, coerce_args, encode_sparse, encoding_function, section};
use super::DictionaryRegistry;

encoding_function!(
    /// `crosscoder_encode(base, ft, name)`.
    CrosscoderEncode
);

/// Vector arguments before the name.
const VECTORS: usize = 2;
const SYNTAX: &str = "crosscoder_encode(base, ft, name)";

impl ScalarUDFImpl for CrosscoderEncode {
    fn name(&self) -> &str {
        "crosscoder_encode"
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
        encode_sparse(&self.registry, self.name(), &args, VECTORS, DictionaryKind::Crosscoder)
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
            "The active latents of a crosscoder for a (base, ft) pair of vectors, largest first, as a list of \
             {latent, value}. Inputs are in the model's units; the dictionary's normalisation is applied.",
            SYNTAX,
        )
        .with_sql_example(
            "```sql\n> SELECT pos, crosscoder_encode(base, ft, 'crosscoder_L2') FROM acts WHERE layer = 2 LIMIT 3;\n```",
        )
        .with_argument("base", "The base model's vector.")
        .with_argument("ft", "The organism's vector for the same token.")
        .with_argument("name", "A dictionary: 'name', 'organism/name' or 'model/organism/name'.")
        .build()
    });
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dictionary::encode::tests::{function_of, list_of_floats};

    #[test]
    fn it_takes_two_vectors_and_a_name() {
        let f = function_of(CrosscoderEncode::new);
        let coerced = f
            .coerce_types(&[list_of_floats(), list_of_floats(), DataType::Utf8])
            .unwrap();
        assert_eq!(coerced.len(), 3);
        let e = f
            .coerce_types(&[list_of_floats(), DataType::Utf8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("crosscoder_encode takes 3 arguments, got 2") && e.contains(SYNTAX),
            "{e}"
        );
    }
}
