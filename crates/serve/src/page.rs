//! What every page needs: errors as pages (one clear line and a status, never a crash), and Arrow values as
//! table cells (numbers short, vectors abbreviated).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;

/// A request that cannot be answered: shown as a page with the status and one line saying what and why.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: diffsql_model::one_line(&e),
        }
    }
}

impl From<datafusion::error::DataFusionError> for PageError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffsql: {status}</title>\
             <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
             <nav><a class=\"brand\" href=\"/\">diffsql</a><a href=\"/\">Overview</a><a href=\"/tokens\">Tokens</a>\
             <a href=\"/sql\">SQL</a><a href=\"/chat\">Chat</a></nav><main>\
             <h1>{status}</h1><p class=\"error\" id=\"error\">{message}</p><p><a href=\"/\">Back to the overview</a></p>\
             </main></body></html>",
            status = self.status,
            message = escape(&self.message)
        );
        (self.status, Html(body)).into_response()
    }
}

/// The page for an address the dashboard does not have.
pub async fn not_found(uri: axum::http::Uri) -> PageError {
    PageError::not_found(format!(
        "there is no page {}: the overview links every page",
        uri.path()
    ))
}

/// `value` for a template (any serde value: structs, lists of them).
pub fn ser<T: Serialize>(value: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

/// The result of a handler that renders a page.
pub type PageResult = Result<Html<String>, PageError>;

/// `s` safe inside HTML text and attribute values (minijinja's escaping, as the templates escape).
pub fn escape(s: &str) -> String {
    minijinja::HtmlEscape(s).to_string()
}

/// A float with four significant digits (scientific when very large or small).
pub fn short_float(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{x:.3e}")
    } else {
        let digits = if a == 0.0 {
            0
        } else {
            (3 - a.log10().floor() as i32).clamp(0, 6)
        };
        format!("{x:.*}", digits as usize)
    }
}

/// One table cell: its text, and its number when it is one (numbers are right-aligned and sort numerically).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub text: String,
    pub number: Option<f64>,
}

/// Vectors show this many leading values, then how many there are.
const VECTOR_HEAD: usize = 4;

/// The cell of `array` at `row`.
pub fn cell(array: &dyn Array, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell {
            text: "NULL".into(),
            number: None,
        };
    }
    match array.data_type() {
        DataType::Float32 => number(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => number(array.as_primitive::<Float64Type>().value(row)),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let text = formatted(array, row);
            Cell {
                number: text.parse().ok(),
                text,
            }
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            let values = list_values(array, row);
            let len = values.len();
            let head: Vec<String> = values
                .iter()
                .take(VECTOR_HEAD)
                .map(|v| cell(v.as_ref(), 0).text)
                .collect();
            let text = if len > VECTOR_HEAD {
                format!("[{}, … {len} values]", head.join(", "))
            } else {
                format!("[{}]", head.join(", "))
            };
            Cell { text, number: None }
        }
        _ => Cell {
            text: formatted(array, row),
            number: None,
        },
    }
}

fn number(x: f64) -> Cell {
    Cell {
        text: short_float(x),
        number: Some(x),
    }
}

fn formatted(array: &dyn Array, row: usize) -> String {
    ArrayFormatter::try_new(array, &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// The elements of the list at `row`, each as a one-element array.
fn list_values(array: &dyn Array, row: usize) -> Vec<std::sync::Arc<dyn Array>> {
    let values = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().value(row),
        DataType::LargeList(_) => array.as_list::<i64>().value(row),
        DataType::FixedSizeList(_, _) => array.as_fixed_size_list().value(row),
        _ => return Vec::new(),
    };
    (0..values.len()).map(|i| values.slice(i, 1)).collect()
}

/// Column names and cells of query results.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Grid {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Grid {
    /// At most `limit` rows of `batches`.
    pub fn from_batches(schema: &datafusion::arrow::datatypes::Schema, batches: &[RecordBatch], limit: usize) -> Self {
        let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut rows = Vec::new();
        'all: for batch in batches {
            for r in 0..batch.num_rows() {
                if rows.len() == limit {
                    break 'all;
                }
                rows.push(batch.columns().iter().map(|c| cell(c.as_ref(), r)).collect());
            }
        }
        Self { columns, rows }
    }

    /// The index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeListArray, Float32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn short_floats_keep_four_significant_digits() {
        assert_eq!(short_float(0.0), "0");
        assert_eq!(short_float(1.23456), "1.235");
        assert_eq!(short_float(123.456), "123.5");
        assert_eq!(short_float(0.0123456), "0.01235");
        assert_eq!(short_float(1.5e-7), "1.500e-7");
        assert_eq!(short_float(-2.5e9), "-2.500e9");
    }

    #[test]
    fn cells_abbreviate_vectors_and_mark_numbers_and_nulls() {
        let values = Arc::new(Float32Array::from((0..10).map(|i| i as f32 * 0.5).collect::<Vec<_>>()));
        let field = Arc::new(Field::new_list_field(DataType::Float32, true));
        let vectors = FixedSizeListArray::new(field, 5, values, None);
        assert_eq!(cell(&vectors, 1).text, "[2.500, 3.000, 3.500, 4.000, … 5 values]");
        let ints = Int64Array::from(vec![Some(42), None]);
        assert_eq!(cell(&ints, 0).number, Some(42.0));
        assert_eq!(cell(&ints, 1).text, "NULL");
        let text = StringArray::from(vec!["<b>"]);
        assert_eq!(cell(&text, 0).text, "<b>");
        assert_eq!(cell(&text, 0).number, None);
        assert_eq!(escape("<a href='x'>&\""), "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;");
    }
}
