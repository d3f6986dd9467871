//! diffsql's table functions called from a foreign DataFusion session (datafusion-python). The FFI's own
//! table-function path cannot carry them: a subquery argument (`logit_lens((SELECT …), …)`) does not serialise
//! across it. So the caller lifts subquery arguments out of the SQL text (`split_subqueries`), runs them in its
//! own session, and hands every argument over as Arrow data; `call` rebuilds the expressions, calls diffsql's
//! `TableFunctionImpl` and returns a table provider whose scans run in diffsql's session.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableFunctionArgs, TableProvider};
use datafusion::common::{ScalarValue, Spans};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, Subquery, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use tokio::runtime::Handle;

/// The prefix of the string literal that stands for a lifted subquery argument; a counter keeps every one
/// unique, so nested queries (a subquery that itself calls a table function) never mix theirs up.
const TOKEN_PREFIX: &str = "__diffsql_subquery_";
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Lifts every subquery argument of a call to one of `functions` out of the SQL: each becomes a unique string
/// literal. Returns the rewritten statement and (literal, subquery SQL) pairs, or None when there is nothing to
/// lift or the text does not parse as one statement (datafusion-python then reports on the text as written).
pub fn split_subqueries(sql: &str, functions: &[String]) -> Option<(String, Vec<(String, String)>)> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let mut statement = statements.pop_front()?;
    let datafusion::sql::parser::Statement::Statement(inner) = &mut statement else {
        return None;
    };
    let mut lifter = Lifter {
        functions,
        lifted: Vec::new(),
    };
    let _ = inner.visit(&mut lifter);
    if lifter.lifted.is_empty() {
        return None;
    }
    Some((statement.to_string(), lifter.lifted))
}

struct Lifter<'a> {
    functions: &'a [String],
    lifted: Vec<(String, String)>,
}

impl VisitorMut for Lifter<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> std::ops::ControlFlow<()> {
        let TableFactor::Table {
            name, args: Some(args), ..
        } = factor
        else {
            return std::ops::ControlFlow::Continue(());
        };
        let called = name.to_string().to_lowercase();
        if !self.functions.contains(&called) {
            return std::ops::ControlFlow::Continue(());
        }
        for arg in &mut args.args {
            let (FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            }
            | FunctionArg::ExprNamed {
                arg: FunctionArgExpr::Expr(e),
                ..
            }) = arg
            else {
                continue;
            };
            if let SqlExpr::Subquery(query) = e {
                let token = format!("{TOKEN_PREFIX}{}", NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
                self.lifted.push((token.clone(), query.to_string()));
                *e = SqlExpr::value(Value::SingleQuotedString(token));
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// One argument as the caller hands it over: a lifted subquery's rows, or a literal as a one-row column.
pub enum Argument {
    Rows(SchemaRef, Vec<RecordBatch>),
    Literal(SchemaRef, Vec<RecordBatch>),
}

impl Argument {
    /// The expression diffsql's table functions expect: a scalar subquery over the rows, or the literal.
    fn into_expr(self, function: &str, index: usize) -> DfResult<Expr> {
        match self {
            Argument::Rows(schema, batches) => {
                let table = MemTable::try_new(schema, vec![batches])?;
                let plan = LogicalPlanBuilder::scan(
                    format!("{function}_argument_{index}"),
                    provider_as_source(Arc::new(table)),
                    None,
                )?
                .build()?;
                Ok(Expr::ScalarSubquery(Subquery {
                    subquery: Arc::new(plan),
                    outer_ref_columns: Vec::new(),
                    spans: Spans::new(),
                }))
            }
            Argument::Literal(_, batches) => {
                let column = batches
                    .iter()
                    .find(|b| b.num_rows() > 0)
                    .map(|b| Arc::clone(b.column(0)))
                    .ok_or_else(|| DataFusionError::Plan(format!("{function}: argument {} has no value", index + 1)))?;
                Ok(Expr::Literal(ScalarValue::try_from_array(&column, 0)?, None))
            }
        }
    }
}

/// The table functions diffsql adds to `state` (DataFusion's own, such as `generate_series`, left out).
pub fn table_function_names(state: &SessionState) -> Vec<String> {
    let builtin = datafusion::prelude::SessionContext::new().state();
    let mut names: Vec<String> = state
        .table_functions()
        .keys()
        .filter(|name| !builtin.table_functions().contains_key(*name))
        .cloned()
        .collect();
    names.sort();
    names
}

/// Calls the table function `name` of `state` on `arguments`; its scans run in `state`, on `runtime` (the
/// caller polls them from its own runtime, which this library's tokio cannot see: a scan that spawns tasks, as
/// executing a subquery of several partitions does, needs one of ours).
pub fn call(
    state: &SessionState,
    name: &str,
    arguments: Vec<Argument>,
    runtime: Handle,
) -> DfResult<Arc<dyn TableProvider>> {
    let function = state
        .table_functions()
        .get(name)
        .cloned()
        .ok_or_else(|| DataFusionError::Plan(format!("diffsql has no table function {name}")))?;
    let exprs = arguments
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.into_expr(name, i))
        .collect::<DfResult<Vec<_>>>()?;
    let inner = function
        .function()
        .call_with_args(TableFunctionArgs::new(&exprs, state))?;
    Ok(Arc::new(InOwnSession {
        inner,
        state: state.clone(),
        runtime,
    }))
}

/// A table function's result, scanned in diffsql's session: its subquery arguments and model functions live
/// there, not in the foreign session the FFI hands to `scan`.
struct InOwnSession {
    inner: Arc<dyn TableProvider>,
    state: SessionState,
    runtime: Handle,
}

impl fmt::Debug for InOwnSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InOwnSession").field("inner", &self.inner).finish()
    }
}

#[async_trait]
impl TableProvider for InOwnSession {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        _foreign: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (inner, state) = (Arc::clone(&self.inner), self.state.clone());
        let (projection, filters) = (projection.cloned(), filters.to_vec());
        self.runtime
            .spawn(async move { inner.scan(&state, projection.as_ref(), &filters, limit).await })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["logit_lens".to_string(), "nmf".to_string()]
    }

    #[test]
    fn lifts_only_subquery_arguments_of_the_named_functions() {
        let sql = "SELECT * FROM logit_lens((SELECT v FROM t ORDER BY k), 'm', 5) JOIN other((SELECT 1)) ON true";
        let (rewritten, lifted) = split_subqueries(sql, &names()).expect("one lifted");
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].1, "SELECT v FROM t ORDER BY k");
        assert!(
            rewritten.contains(&format!("logit_lens('{}', 'm', 5)", lifted[0].0)),
            "{rewritten}"
        );
        assert!(rewritten.contains("other((SELECT 1))"), "{rewritten}");
    }

    #[test]
    fn leaves_text_without_subquery_arguments_alone() {
        assert!(split_subqueries("SELECT * FROM logit_lens([1.0], 'm', 5)", &names()).is_none());
        assert!(split_subqueries("SELEC nonsense", &names()).is_none());
        assert!(split_subqueries("SELECT 1; SELECT 2", &names()).is_none());
    }

    #[test]
    fn nested_calls_get_distinct_tokens() {
        let sql = "SELECT * FROM nmf((SELECT x FROM logit_lens((SELECT v FROM t), 'm', 1)), 2, 3)";
        let (_, outer) = split_subqueries(sql, &names()).expect("outer lifted");
        assert_eq!(
            outer.len(),
            1,
            "the inner call travels inside the outer subquery's text"
        );
        let (_, inner) = split_subqueries(&outer[0].1, &names()).expect("inner lifted");
        assert_ne!(outer[0].0, inner[0].0);
    }
}
