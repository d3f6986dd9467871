//! What the three encoding functions share: their arguments (vectors, then a constant dictionary name), the
//! dictionary looked up and checked to be of the function's kind, each row's vectors gathered into one
//! buffer, and the sparse codes as a list of `{latent, value}`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float32Builder, Int32Builder, ListBuilder, StructBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_err, plan_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, DocSection, ScalarFunctionArgs};
use datafusion::prelude::Expr;
use diffsql_core::config::DictionaryKind;
use diffsql_train::store::DictionaryManifest;
use diffsql_udfs::vector::{coerce_vector_arg, Vectors};

use super::{DictionaryRegistry, LoadedDictionary};

/// The documentation section of the dictionary functions.
pub(super) fn section() -> DocSection {
    DocSection {
        include: true,
        label: "Dictionary functions",
        description: Some(
            "Functions that apply a dictionary trained on the cache (diffing/method=crosscoder, sae_difference, pca).",
        ),
    }
}

/// The dictionary a table function's one argument names, loaded.
pub(super) fn dictionary_arg(
    registry: &DictionaryRegistry,
    function: &str,
    exprs: &[Expr],
) -> Result<Arc<LoadedDictionary>> {
    let [expr] = exprs else {
        return plan_err!(
            "{function}(name) takes 1 argument, got {}: e.g. {function}('crosscoder_L2')",
            exprs.len()
        );
    };
    let Some(name) = crate::args::literal_str(expr) else {
        return plan_err!("{function}: the dictionary name must be a string literal, got {expr}");
    };
    registry
        .get(name)
        .map_err(|e| DataFusionError::Plan(format!("{function}: {e:#}")))
}

/// The argument types of a function taking `vectors` vectors and then `rest`, or an error showing `syntax`.
pub(super) fn coerce_args(
    function: &str,
    syntax: &str,
    arg_types: &[DataType],
    vectors: usize,
    rest: &[DataType],
) -> Result<Vec<DataType>> {
    let expected = vectors + rest.len();
    if arg_types.len() != expected {
        return plan_err!(
            "{function} takes {expected} arguments, got {}: {syntax}",
            arg_types.len()
        );
    }
    let mut out = Vec::with_capacity(expected);
    for (i, t) in arg_types[..vectors].iter().enumerate() {
        out.push(coerce_vector_arg(function, i + 1, t)?);
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// The dictionary named by the constant string at `args[at]`, which must be of `kind`.
pub(super) fn dictionary_of_kind(
    registry: &DictionaryRegistry,
    function: &str,
    args: &ScalarFunctionArgs,
    at: usize,
    kind: DictionaryKind,
) -> Result<Arc<LoadedDictionary>> {
    let name = match &args.args[at] {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(n)) | ScalarValue::Utf8View(Some(n)) | ScalarValue::LargeUtf8(Some(n)),
        ) => n.clone(),
        ColumnarValue::Scalar(s) => return exec_err!("{function}: the dictionary name must be a string, got {s}"),
        ColumnarValue::Array(_) => {
            return exec_err!("{function}: the dictionary name must be a constant string, not a column")
        }
    };
    let dict = registry
        .get(&name)
        .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
    let m = &dict.manifest;
    if m.kind != kind {
        return exec_err!(
            "{function}: dictionary {} is a {} dictionary; use {}",
            m.id,
            m.kind.name(),
            match m.kind {
                DictionaryKind::Crosscoder => "crosscoder_encode(base, ft, name)",
                DictionaryKind::SaeDifference => "sae_encode(v, name)",
                DictionaryKind::Pca => "pca_project(v, name, n)",
            }
        );
    }
    Ok(dict)
}

/// The first `vectors` arguments of every row, concatenated (a row of width vectors × d_model), and whether
/// each row had all of them (a NULL vector makes the row's result NULL).
pub(super) fn gather_rows(
    function: &str,
    args: &ScalarFunctionArgs,
    vectors: usize,
    m: &DictionaryManifest,
) -> Result<(Vec<f32>, Vec<bool>)> {
    let rows = args.number_rows;
    let arrays: Vec<ArrayRef> = args.args[..vectors]
        .iter()
        .map(|a| a.to_array(rows))
        .collect::<Result<_>>()?;
    let views: Vec<Vectors> = arrays
        .iter()
        .map(|a| Vectors::try_new(function, a.as_ref()))
        .collect::<Result<_>>()?;
    let d = m.d_model;
    let mut flat = Vec::with_capacity(rows * d * vectors);
    let mut valid = Vec::with_capacity(rows);
    let mut scratch = Vec::new();
    for i in 0..rows {
        let mut row_ok = true;
        let start = flat.len();
        for v in &views {
            match v.row(i, &mut scratch) {
                Some(values) if values.len() == d => flat.extend_from_slice(values),
                Some(values) => {
                    return exec_err!(
                        "{function}: a vector of length {} but dictionary {} reads vectors of length {d} (layer {} of model {})",
                        values.len(),
                        m.id,
                        m.layer,
                        m.id.model
                    )
                }
                None => row_ok = false,
            }
        }
        if !row_ok {
            flat.truncate(start);
        }
        valid.push(row_ok);
    }
    Ok((flat, valid))
}

/// The element of what the sparse encoders return: `{latent, value}`.
fn code_fields() -> Fields {
    Fields::from(vec![
        Field::new("latent", DataType::Int32, false),
        Field::new("value", DataType::Float32, false),
    ])
}

/// The type of what the sparse encoders return.
pub(super) fn code_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Struct(code_fields()), true)))
}

/// The sparse codes of the valid rows (`codes` has one entry per valid row) as a list of `{latent, value}`,
/// NULL for the others.
fn codes_array(function: &str, codes: Vec<Vec<(i32, f32)>>, valid: &[bool]) -> Result<ArrayRef> {
    if codes.len() != valid.iter().filter(|v| **v).count() {
        return exec_err!(
            "{function}: the encoder returned {} rows for {} vectors",
            codes.len(),
            valid.len()
        );
    }
    let mut builder = ListBuilder::new(StructBuilder::new(
        code_fields(),
        vec![Box::new(Int32Builder::new()), Box::new(Float32Builder::new())],
    ));
    let mut rows = codes.into_iter();
    for ok in valid {
        let row = if *ok { rows.next() } else { None };
        let Some(row) = row else {
            builder.append(false);
            continue;
        };
        let s = builder.values();
        for (latent, value) in row {
            if let Some(b) = s.field_builder::<Int32Builder>(0) {
                b.append_value(latent);
            }
            if let Some(b) = s.field_builder::<Float32Builder>(1) {
                b.append_value(value);
            }
            s.append(true);
        }
        builder.append(true);
    }
    Ok(Arc::new(builder.finish()))
}

/// The sparse codes of the first `vectors` arguments under the dictionary named next, which must be of `kind`.
pub(super) fn encode_sparse(
    registry: &DictionaryRegistry,
    function: &str,
    args: &ScalarFunctionArgs,
    vectors: usize,
    kind: DictionaryKind,
) -> Result<ColumnarValue> {
    let dict = dictionary_of_kind(registry, function, args, vectors, kind)?;
    let (rows, valid) = gather_rows(function, args, vectors, &dict.manifest)?;
    let codes = dict
        .encode(&rows)
        .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
    finish(codes_array(function, codes, &valid)?, args, vectors)
}

/// A scalar when every vector argument was one (a literal call), else the column.
pub(super) fn finish(result: ArrayRef, args: &ScalarFunctionArgs, vectors: usize) -> Result<ColumnarValue> {
    if args.args[..vectors]
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)))
    {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?));
    }
    Ok(ColumnarValue::Array(result))
}

/// An encoding function's struct: the registry it reads dictionaries from and its signature, with `new` and
/// the `PartialEq`, `Eq` and `Hash` DataFusion asks of a function (equal when they read the same registry).
macro_rules! encoding_function {
    ($(#[$doc:meta])* $function:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $function {
            registry: std::sync::Arc<DictionaryRegistry>,
            signature: datafusion::logical_expr::Signature,
        }

        impl $function {
            pub fn new(registry: std::sync::Arc<DictionaryRegistry>) -> Self {
                Self {
                    registry,
                    signature: datafusion::logical_expr::Signature::user_defined(
                        datafusion::logical_expr::Volatility::Stable,
                    ),
                }
            }
        }

        impl PartialEq for $function {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.registry, &other.registry)
            }
        }
        impl Eq for $function {}
        impl std::hash::Hash for $function {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                datafusion::logical_expr::ScalarUDFImpl::name(self).hash(state);
            }
        }
    };
}
pub(super) use encoding_function;

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};

    /// An encoding function over an empty cache's registry.
    pub(crate) fn function_of<F>(new: impl Fn(Arc<DictionaryRegistry>) -> F) -> F {
        new(Arc::new(DictionaryRegistry::new(
            diffsql_core::cache::CacheLayout::new("."),
        )))
    }

    /// A list of float64, as a SQL literal vector arrives.
    pub(crate) fn list_of_floats() -> DataType {
        DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
    }

    #[test]
    fn codes_are_null_for_rows_without_vectors_and_in_order_for_the_others() {
        let codes = vec![vec![(3, 0.5), (1, 0.25)], vec![]];
        let array = codes_array("sae_encode", codes, &[true, false, true]).unwrap();
        let list = array.as_list::<i32>();
        assert_eq!(list.len(), 3);
        assert!(list.is_valid(0) && list.is_null(1) && list.is_valid(2));
        assert_eq!(list.value_length(0), 2);
        assert_eq!(list.value_length(2), 0);
        let latents = list.value(0);
        let latents = latents
            .as_struct()
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!(latents.values(), &[3, 1]);
    }

    #[test]
    fn a_wrong_argument_count_names_the_function_and_shows_the_call() {
        let e = coerce_args(
            "pca_project",
            "pca_project(v, name, n)",
            &[DataType::Utf8],
            1,
            &[DataType::Utf8],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pca_project takes 2 arguments, got 1: pca_project(v, name, n)"),
            "{e}"
        );
    }
}
