//! Literal arguments of table functions, read one way for all of them (each caller words its own error).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;

/// The text of a string literal.
pub fn literal_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

/// The value of a literal that casts to a 64-bit integer.
pub fn literal_i64(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(n))) => Some(n),
            _ => None,
        },
        _ => None,
    }
}
