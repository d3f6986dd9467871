//! The arguments the intervention table functions share: literals (a side, a prompt, counts, numbers or lists of
//! numbers) and vectors given as a literal or a one-column subquery, each checked with an error naming the
//! function and the argument.

use std::sync::Arc;

use datafusion::arrow::array::Float64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use diffsql_model::{one_line, LoadedModel};

use super::Sides;

/// An intervention function's struct: the sides (loaded models) it runs, with `new`.
macro_rules! side_function {
    ($(#[$doc:meta])* $function:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $function {
            sides: std::sync::Arc<Sides>,
        }

        impl $function {
            pub fn new(sides: std::sync::Arc<Sides>) -> Self {
                Self { sides }
            }
        }
    };
}
pub(super) use side_function;

/// The model of the `side` argument (`base`, an organism, `MODEL/ORGANISM`), loaded once per session.
pub(super) fn side_arg(sides: &Sides, f: &str, e: &Expr) -> Result<Arc<LoadedModel>> {
    let side = string_arg(f, e, "side")?;
    sides
        .get(&side)
        .map_err(|err| DataFusionError::Plan(format!("{f}: side {side:?}: {}", one_line(&err))))
}

/// Fails unless `exprs` has between `min` and `max` arguments, showing `usage`.
pub(super) fn check_arity(f: &str, exprs: &[Expr], min: usize, max: usize, usage: &str) -> Result<()> {
    if exprs.len() < min || exprs.len() > max {
        let count = if min == max {
            min.to_string()
        } else {
            format!("{min} or {max}")
        };
        return plan_err!("{f} takes {count} arguments, got {}: {usage}", exprs.len());
    }
    Ok(())
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

pub(super) fn string_arg(f: &str, e: &Expr, what: &str) -> Result<String> {
    match crate::args::literal_str(e) {
        Some(s) => Ok(s.to_string()),
        None => plan_err!("{f}: {what} must be a string literal, got {e}"),
    }
}

pub(super) fn usize_arg(f: &str, e: &Expr, what: &str) -> Result<usize> {
    match crate::args::literal_i64(e) {
        Some(n) if n >= 0 => Ok(n as usize),
        _ => plan_err!("{f}: {what} must be a non-negative integer literal, got {e}"),
    }
}

/// A number, or a list literal of numbers, as f64 values.
pub(super) fn numbers_arg(f: &str, e: &Expr, what: &str) -> Result<Vec<f64>> {
    let Some(v) = literal(e) else {
        return plan_err!("{f}: {what} must be a number or a list of numbers, got {e}");
    };
    let values = match v {
        ScalarValue::List(list) => {
            let values = datafusion::arrow::compute::cast(list.values(), &DataType::Float64)?;
            values
                .as_any()
                .downcast_ref::<Float64Array>()
                .and_then(|values| values.iter().collect::<Option<Vec<f64>>>())
        }
        other => match other.cast_to(&DataType::Float64) {
            Ok(ScalarValue::Float64(Some(x))) => Some(vec![x]),
            _ => None,
        },
    };
    match values {
        Some(v) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => Ok(v),
        Some(_) => plan_err!("{f}: {what} must be finite, got {e}"),
        None => plan_err!("{f}: {what} must be a number or a list of numbers, got {e}"),
    }
}

pub(super) fn vector_plan(f: &str, e: &Expr) -> Result<LogicalPlan> {
    let plan = match e {
        Expr::ScalarSubquery(sub) => sub.subquery.as_ref().clone(),
        e => LogicalPlanBuilder::empty(true).project(vec![e.clone()])?.build()?,
    };
    if plan.schema().fields().len() != 1 {
        return plan_err!("{f}: the vector subquery must return one column");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::lit;

    #[test]
    fn numbers_are_one_or_a_list_and_finite() {
        assert_eq!(numbers_arg("steer", &lit(2.5), "alpha").unwrap(), vec![2.5]);
        let list = Expr::Literal(
            ScalarValue::List(ScalarValue::new_list_nullable(
                &[ScalarValue::Int64(Some(1)), ScalarValue::Int64(Some(4))],
                &DataType::Int64,
            )),
            None,
        );
        assert_eq!(numbers_arg("steer", &list, "alpha").unwrap(), vec![1.0, 4.0]);
        let e = numbers_arg("steer", &lit(f64::NAN), "alpha").unwrap_err().to_string();
        assert!(e.contains("steer: alpha must be finite"), "{e}");
        let e = numbers_arg("steer", &lit("x"), "alpha").unwrap_err().to_string();
        assert!(e.contains("steer: alpha must be a number or a list of numbers"), "{e}");
    }

    #[test]
    fn counts_must_be_non_negative_literals() {
        assert_eq!(usize_arg("generate", &lit(3i64), "max_new_tokens").unwrap(), 3);
        let e = usize_arg("generate", &lit(-1i64), "max_new_tokens")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("generate: max_new_tokens must be a non-negative integer literal"),
            "{e}"
        );
        let e = check_arity("generate", &[lit(1)], 3, 3, "generate(side, prompt, max_new_tokens)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("generate takes 3 arguments, got 1"), "{e}");
    }
}
