//! `pca_project(v, name, n)`: the coordinates of a difference vector along the first n principal components
//! of ft − base.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float32Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature};
use diffsql_core::config::DictionaryKind;
use diffsql_udfs::vector::float32_item;

use super::encode::{coerce_args, dictionary_of_kind, encoding_function, finish, gather_rows, section};
use super::DictionaryRegistry;

encoding_function!(
    /// `pca_project(v, name, n)`.
    PcaProject
);

/// Vector arguments before the name.
const VECTORS: usize = 1;
const SYNTAX: &str = "pca_project(v, name, n)";

impl ScalarUDFImpl for PcaProject {
    fn name(&self) -> &str {
        "pca_project"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_args(
            self.name(),
            SYNTAX,
            arg_types,
            VECTORS,
            &[DataType::Utf8, DataType::Int64],
        )
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(float32_item()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let function = self.name();
        let dict = dictionary_of_kind(&self.registry, function, &args, VECTORS, DictionaryKind::Pca)?;
        let m = &dict.manifest;
        let n = match &args.args[VECTORS + 1] {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) if n >= 1 && n as usize <= m.latents => n as usize,
                other => {
                    return exec_err!(
                        "{function}: n must be between 1 and the {} components kept by {}, got {other}",
                        m.latents,
                        m.id
                    )
                }
            },
            ColumnarValue::Array(_) => return exec_err!("{function}: n must be a constant"),
        };
        let (rows, valid) = gather_rows(function, &args, VECTORS, m)?;
        let values = dict
            .project(&rows, n)
            .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
        let lengths: Vec<usize> = valid.iter().map(|ok| if *ok { n } else { 0 }).collect();
        let result: ArrayRef = Arc::new(ListArray::try_new(
            float32_item(),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(Float32Array::from(values)),
            Some(valid.iter().copied().collect()),
        )?);
        finish(result, &args, VECTORS)
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
            "Coordinates of a difference vector along the first n principal components of ft − base (mean removed).",
            SYNTAX,
        )
        .with_sql_example("```sql\n> SELECT pca_project(vec_sub(ft, base), 'pca_L2', 3) FROM acts LIMIT 5;\n```")
        .with_argument("v", "A difference vector ft − base.")
        .with_argument("name", "A PCA dictionary.")
        .with_argument("n", "How many components (at most those kept).")
        .build()
    });
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dictionary::encode::tests::{function_of, list_of_floats};

    #[test]
    fn it_takes_a_vector_a_name_and_a_count() {
        let f = function_of(PcaProject::new);
        let coerced = f
            .coerce_types(&[list_of_floats(), DataType::Utf8, DataType::Int32])
            .unwrap();
        assert_eq!(coerced[2], DataType::Int64);
        let e = f
            .coerce_types(&[list_of_floats(), DataType::Utf8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pca_project takes 3 arguments, got 2") && e.contains(SYNTAX),
            "{e}"
        );
    }
}
