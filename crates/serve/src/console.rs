//! The SQL console: statements run in a read-only session over the cache (no COPY, no external tables, no
//! INSERT), each page of statements under a time limit, results shown as tables with vectors abbreviated.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::Html;
use axum::Form;
use serde::{Deserialize, Serialize};

use super::page::{ser, Grid, PageResult};
use super::state::AppState;

/// Rows shown per statement (the count says how many there were).
const SHOWN_ROWS: usize = 1000;

/// The query the console starts with: the project card's.
pub const EXAMPLE: &str = "SELECT organism, layer, normdiff(base, ft) AS normdiff FROM acts GROUP BY organism, layer ORDER BY organism, layer";

#[derive(Debug, Deserialize, Default)]
pub struct ConsoleInput {
    q: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatementShown {
    grid: Grid,
    rows: usize,
}

/// `GET /sql[?q=…]`: the console (running `q` when given, so a query can be linked).
pub async fn page(State(state): State<Arc<AppState>>, Query(input): Query<ConsoleInput>) -> PageResult {
    respond(&state, input.q).await
}

/// `POST /sql` (form field `q`).
pub async fn run(State(state): State<Arc<AppState>>, Form(input): Form<ConsoleInput>) -> PageResult {
    respond(&state, input.q).await
}

async fn respond(state: &AppState, sql: Option<String>) -> PageResult {
    let mut results = Vec::new();
    let mut error = None;
    let mut seconds = 0.0;
    if let Some(sql) = sql.as_deref().filter(|s| !s.trim().is_empty()) {
        let started = Instant::now();
        match execute(state, sql, &mut results).await {
            Ok(()) => {}
            Err(e) => error = Some(e),
        }
        seconds = started.elapsed().as_secs_f64();
    }
    let html = state.render(
        "sql.html",
        minijinja::context! {
            title => "SQL",
            sql => sql.clone().unwrap_or_else(|| EXAMPLE.to_string()),
            ran => sql.is_some(),
            results => ser(&results),
            error,
            seconds,
            shown_rows => SHOWN_ROWS,
            timeout => state.query_timeout.as_secs(),
        },
    )?;
    Ok(Html(html))
}

async fn execute(state: &AppState, sql: &str, results: &mut Vec<StatementShown>) -> Result<(), String> {
    let ctx = state.session().map_err(|e| diffsql_model::one_line(&e))?;
    diffsql_sql::register_model_functions_with(&ctx, state.configs.clone(), state.overrides.clone());
    let run = diffsql_sql::run_statements(&ctx, sql, |r| {
        results.push(StatementShown {
            grid: Grid::from_batches(&r.schema, &r.batches, SHOWN_ROWS),
            rows: r.rows(),
        });
        Ok(())
    });
    match tokio::time::timeout(state.query_timeout, run).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(diffsql_model::one_line(&e)),
        Err(_) => Err(format!(
            "the query ran past the console's limit of {} s and was stopped; narrow it (WHERE, LIMIT), or run it with `diffsql sql`, or restart the server with --query-timeout SECONDS",
            state.query_timeout.as_secs()
        )),
    }
}
