//! A method's results: its summary, its charts (interactive where the method config declares them, its PNG files
//! otherwise), and its tables sorted and paged on the server, top-token rows shown in their coloured context.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::{Deserialize, Serialize};

use super::catalog::{self, ResultEntry, TableSummary};
use super::context::{self, Colour, Window};
use super::page::{ser, Grid, PageError, PageResult};
use super::state::AppState;
use diffsql_diffing::plots::{Columns, PlotKind, PlotSpec};

/// Rows per table page.
const PAGE_ROWS: usize = 50;
/// Rows of each table on the method page.
const PREVIEW_ROWS: usize = 10;
/// Tokens either side of a top token in its context.
const CONTEXT_TOKENS: i64 = 12;
/// Rows a chart reads at most.
const CHART_ROWS: usize = 20_000;
/// Bars a bar chart shows at most.
const CHART_BARS: usize = 30;

#[derive(Debug, Deserialize, Default)]
pub struct TableQuery {
    sort: Option<String>,
    desc: Option<u8>,
    page: Option<usize>,
    color: Option<String>,
    layer: Option<i32>,
    dictionary: Option<String>,
    latent: Option<i64>,
}

impl TableQuery {
    /// The colour asked for, checked against the dictionaries of `entry`'s organism.
    fn colour(&self, state: &AppState, entry: &ResultEntry) -> Result<Colour, PageError> {
        let colour = Colour::parse(
            self.color.as_deref(),
            self.layer,
            self.dictionary.as_deref(),
            self.latent,
        )
        .map_err(PageError::bad_request)?;
        colour.check(
            &diffsql_core::cache::CacheLayout::new(&state.cache_dir),
            &entry.model,
            &entry.organism,
        )?;
        Ok(colour)
    }
}

/// A table as shown: its grid, and for top-token tables each row's context.
#[derive(Debug, Serialize)]
struct ShownTable {
    name: String,
    rows: u64,
    grid: Grid,
    contexts: Vec<Vec<context::ShownToken>>,
    /// Each row's link into the token browser (top-token tables).
    browse: Vec<String>,
}

/// A chart for the page: a line chart drawn by uPlot from `data`, or bars drawn in HTML.
#[derive(Debug, Serialize)]
struct Chart {
    kind: String,
    title: String,
    x_label: String,
    y_label: String,
    /// Line: `{"x": [...], "series": [{"name", "y": [...], "error": [...]}]}` as JSON.
    data: Option<String>,
    bars: Vec<Bar>,
}

#[derive(Debug, Serialize)]
struct Bar {
    label: String,
    value: f64,
    /// Width, 0–100 (% of the largest magnitude).
    width: f64,
}

/// The `[[plots]]` of a method config (the rest of the config is the pipeline's business).
#[derive(Debug, Deserialize, Default)]
struct MethodPlots {
    #[serde(default)]
    plots: Vec<PlotSpec>,
}

fn method_plots(state: &AppState, method: &str) -> Vec<PlotSpec> {
    let path = state
        .configs
        .path()
        .join("diffing/method")
        .join(format!("{method}.toml"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<MethodPlots>(&text).ok())
        .map(|m| m.plots)
        .unwrap_or_default()
}

/// A session with the table's Parquet file registered as `t`.
async fn table_session(entry: &ResultEntry, table: &TableSummary) -> Result<SessionContext, PageError> {
    let file = table
        .parquet
        .clone()
        .unwrap_or_else(|| format!("{}.parquet", table.name));
    let path = entry.dir.join(&file);
    if !path.is_file() {
        return Err(PageError::not_found(format!(
            "{} is missing: rerun the method ({} for organism {})",
            path.display(),
            entry.method,
            entry.organism
        )));
    }
    let ctx = SessionContext::new();
    ctx.register_parquet("t", path.to_string_lossy().as_ref(), ParquetReadOptions::default())
        .await?;
    Ok(ctx)
}

/// Rows `offset..offset+limit` of a result table, ordered by `sort` when given (a column of the table).
async fn read_rows(
    entry: &ResultEntry,
    table: &TableSummary,
    sort: Option<(&str, bool)>,
    offset: usize,
    limit: usize,
) -> Result<Grid, PageError> {
    let ctx = table_session(entry, table).await?;
    let schema: Schema = ctx.table("t").await?.schema().as_arrow().clone();
    let mut df = ctx.table("t").await?;
    if let Some((column, desc)) = sort {
        if schema.field_with_name(column).is_err() {
            return Err(PageError::bad_request(format!(
                "table {} has no column {column:?} to sort by (it has: {})",
                table.name,
                table.columns.join(", ")
            )));
        }
        // The column as an expression, never as SQL text: any name is just a name.
        df = df.sort(vec![datafusion::logical_expr::ident(column).sort(!desc, false)])?;
    }
    let df = df.limit(offset, Some(limit))?;
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await?;
    Ok(Grid::from_batches(&schema, &batches, limit))
}

/// Whether a table's rows are tokens of the cache (they have dataset, seq_id and pos).
fn is_token_table(grid: &Grid) -> bool {
    ["dataset", "seq_id", "pos"].iter().all(|c| grid.column(c).is_some())
}

/// Each row's context (top-token tables), coloured by `colour`, read through the page's cache session (None when
/// the cache cannot be read, which leaves the contexts out).
async fn with_contexts(
    state: &AppState,
    session: Option<&SessionContext>,
    entry: &ResultEntry,
    name: &str,
    rows: u64,
    grid: Grid,
    colour: &Colour,
) -> Result<ShownTable, PageError> {
    let mut shown = ShownTable {
        name: name.into(),
        rows,
        grid,
        contexts: Vec::new(),
        browse: Vec::new(),
    };
    if !is_token_table(&shown.grid) {
        return Ok(shown);
    }
    let (d, s, p) = (
        shown.grid.column("dataset").unwrap_or(0),
        shown.grid.column("seq_id").unwrap_or(0),
        shown.grid.column("pos").unwrap_or(0),
    );
    let windows: Vec<Window> = shown
        .grid
        .rows
        .iter()
        .filter_map(|r| {
            let pos = r[p].number? as i64;
            Some(Window {
                dataset: r[d].text.clone(),
                seq_id: r[s].number? as i64,
                start: (pos - CONTEXT_TOKENS).max(0),
                end: pos + CONTEXT_TOKENS,
                target: Some(pos),
            })
        })
        .collect();
    let Some(ctx) = session else {
        return Ok(shown);
    };
    let vocab = state.vocabulary(ctx, &entry.model).await.unwrap_or_default();
    match context::windows(
        state,
        ctx,
        &vocab,
        &entry.model,
        &entry.organism,
        &windows,
        colour,
        true,
    )
    .await
    {
        Ok(contexts) => shown.contexts = contexts,
        Err(e) => eprintln!("serve: contexts of {}: {}", name, diffsql_model::one_line(&e)),
    }
    // Rows of a dictionary method name a latent: their link colours the sequence by it.
    let dictionary = method_dictionary(state, entry);
    let latent_column = shown.grid.column("latent");
    shown.browse = windows
        .iter()
        .zip(&shown.grid.rows)
        .map(|(w, row)| {
            let row_colour = match (&dictionary, latent_column.and_then(|c| row[c].number)) {
                (Some(d), Some(latent)) => Colour::Latent {
                    dictionary: d.clone(),
                    latent: latent as i64,
                },
                _ => colour.clone(),
            };
            format!(
                "/tokens?model={}&organism={}&dataset={}&seq={}&focus={}&{}",
                url(&entry.model),
                url(&entry.organism),
                url(&w.dataset),
                w.seq_id,
                w.target.unwrap_or(0),
                row_colour.query()
            )
        })
        .collect();
    Ok(shown)
}

/// The dictionary a dictionary method's results come from: the newest of its kind for the organism.
fn method_dictionary(state: &AppState, entry: &ResultEntry) -> Option<String> {
    use diffsql_core::config::DictionaryKind;
    let kind = match entry.method.as_str() {
        "crosscoder" => DictionaryKind::Crosscoder,
        "sae_difference" => DictionaryKind::SaeDifference,
        "pca" => DictionaryKind::Pca,
        _ => return None,
    };
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    diffsql_train::store::list(&layout)
        .ok()?
        .into_iter()
        .filter(|m| m.id.model == entry.model && m.id.organism == entry.organism && m.kind == kind)
        .max_by_key(|m| m.created_unix)
        .map(|m| m.id.name)
}

/// `s` percent-encoded for a query string (minijinja's `urlencode`, as the templates encode).
pub fn url(s: &str) -> String {
    minijinja::filters::urlencode(&minijinja::Value::from(s)).unwrap_or_default()
}

async fn charts(entry: &ResultEntry, tables: &[TableSummary], specs: &[PlotSpec]) -> Vec<Chart> {
    let mut out = Vec::new();
    for spec in specs {
        let Some(table) = tables.iter().find(|t| t.name == spec.table) else {
            continue;
        };
        match chart(entry, table, spec).await {
            Ok(c) => out.push(c),
            Err(e) => eprintln!("serve: chart {:?}: {}", spec.title, diffsql_model::one_line(&e)),
        }
    }
    out
}

async fn chart(entry: &ResultEntry, table: &TableSummary, spec: &PlotSpec) -> anyhow::Result<Chart> {
    let ctx = table_session(entry, table)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let batches = ctx.table("t").await?.limit(0, Some(CHART_ROWS))?.collect().await?;
    let cols = Columns::new(&batches, &spec.table);
    let keep = diffsql_diffing::plots::keep(spec, &cols)?;
    let mut out = Chart {
        kind: spec.kind.name().to_string(),
        title: spec.title.clone(),
        x_label: spec.x_label.clone().unwrap_or_else(|| spec.x.clone()),
        y_label: spec.y_label.clone().unwrap_or_else(|| spec.y.clone()),
        data: None,
        bars: Vec::new(),
    };
    let ys = cols.numbers(&spec.y)?;
    if spec.kind == PlotKind::Bars {
        let labels = cols.text(&spec.x)?;
        let rows: Vec<(String, f64)> = labels
            .into_iter()
            .zip(ys)
            .zip(&keep)
            .filter(|(_, k)| **k)
            .filter_map(|((l, y), _)| Some((context::visible(&l.unwrap_or_default()), y?)))
            .take(CHART_BARS)
            .collect();
        let max = rows.iter().map(|r| r.1.abs()).fold(0.0, f64::max);
        out.bars = rows
            .into_iter()
            .map(|(label, value)| Bar {
                width: if max > 0.0 { 100.0 * value.abs() / max } else { 0.0 },
                label,
                value,
            })
            .collect();
        return Ok(out);
    }
    let xs = cols.numbers(&spec.x)?;
    let errors = match &spec.error {
        Some(e) => cols.numbers(e)?,
        None => vec![None; xs.len()],
    };
    let series = match &spec.series {
        Some(s) => cols.text(s)?,
        None => vec![Some(spec.y.clone()); xs.len()],
    };
    let mut x_values: Vec<f64> = xs
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .filter_map(|(x, _)| *x)
        .collect();
    x_values.sort_by(f64::total_cmp);
    x_values.dedup();
    let mut names: Vec<String> = Vec::new();
    // Per series: y and error at each x.
    let mut values: Vec<[Vec<Option<f64>>; 2]> = Vec::new();
    for i in 0..xs.len() {
        let (Some(x), true) = (xs[i], keep[i]) else { continue };
        let name = series[i].clone().unwrap_or_default();
        let s = match names.iter().position(|n| *n == name) {
            Some(s) => s,
            None => {
                names.push(name);
                values.push([vec![None; x_values.len()], vec![None; x_values.len()]]);
                names.len() - 1
            }
        };
        let at = x_values.partition_point(|v| *v < x);
        values[s][0][at] = ys[i];
        values[s][1][at] = errors[i];
    }
    let series: Vec<serde_json::Value> = names
        .iter()
        .zip(values)
        .map(|(n, [y, e])| serde_json::json!({"name": n, "y": y, "error": e}))
        .collect();
    out.data = Some(serde_json::json!({"x": x_values, "series": series}).to_string());
    Ok(out)
}

/// `GET /results/{model}/{organism}/{method}`.
pub async fn method_page(
    State(state): State<Arc<AppState>>,
    Path((model, organism, method)): Path<(String, String, String)>,
    Query(q): Query<TableQuery>,
) -> PageResult {
    let entry = catalog::find(&state.results_dir, &model, &organism, &method)?;
    let colour = q.colour(&state, &entry)?;
    let mut tables = Vec::new();
    let mut charts_shown = Vec::new();
    let mut pictures = Vec::new();
    if let Some(summary) = &entry.summary {
        // One cache session for every table's contexts.
        let session = state.session().ok();
        for t in &summary.tables {
            let grid = read_rows(&entry, t, None, 0, PREVIEW_ROWS).await?;
            tables.push(with_contexts(&state, session.as_ref(), &entry, &t.name, t.rows, grid, &colour).await?);
        }
        let specs = method_plots(&state, &method);
        charts_shown = charts(&entry, &summary.tables, &specs).await;
        let drawn: Vec<String> = specs
            .iter()
            .filter(|s| summary.tables.iter().any(|t| t.name == s.table))
            .map(|s| s.file_name())
            .collect();
        pictures = summary.plots.iter().filter(|p| !drawn.contains(p)).cloned().collect();
    }
    let html = state.render(
        "method.html",
        minijinja::context! {
            title => format!("{method} · {organism}"),
            entry => ser(&entry),
            tables => ser(&tables),
            charts => ser(&charts_shown),
            pictures,
            colour => colour.params(),
            layers => layers(&state, &model),
        },
    )?;
    Ok(Html(html))
}

/// The cached layers of `model` (for the colour choice).
pub fn layers(state: &AppState, model: &str) -> Vec<i32> {
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    let mut out: Vec<i32> = layout
        .partitions(diffsql_core::cache::Table::Activations)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.model == model)
        .filter_map(|(k, _)| k.layer)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `GET /results/{model}/{organism}/{method}/table/{table}?sort=&desc=&page=`.
pub async fn table_page(
    State(state): State<Arc<AppState>>,
    Path((model, organism, method, table)): Path<(String, String, String, String)>,
    Query(q): Query<TableQuery>,
) -> PageResult {
    let entry = catalog::find(&state.results_dir, &model, &organism, &method)?;
    let colour = q.colour(&state, &entry)?;
    let summary = entry
        .summary
        .as_ref()
        .ok_or_else(|| PageError::not_found(entry.problem.clone().unwrap_or_default()))?;
    let t = summary.tables.iter().find(|t| t.name == table).ok_or_else(|| {
        let names: Vec<String> = summary.tables.iter().map(|t| t.name.clone()).collect();
        PageError::not_found(format!(
            "method {method} has no table {table:?} (it has: {})",
            catalog::list_or_none(&names)
        ))
    })?;
    let page = q.page.unwrap_or(0);
    let pages = (t.rows as usize).div_ceil(PAGE_ROWS).max(1);
    if page >= pages {
        return Err(PageError::bad_request(format!(
            "table {table} has {pages} pages of {PAGE_ROWS} rows; page={page} is past the end (pages count from 0)"
        )));
    }
    let desc = q.desc.unwrap_or(0) == 1;
    // The colour form sends an empty sort when the table is unsorted.
    let sort = q.sort.clone().filter(|s| !s.is_empty());
    let grid = read_rows(
        &entry,
        t,
        sort.as_deref().map(|s| (s, desc)),
        page * PAGE_ROWS,
        PAGE_ROWS,
    )
    .await?;
    let session = state.session().ok();
    let shown = with_contexts(&state, session.as_ref(), &entry, &t.name, t.rows, grid, &colour).await?;
    let html = state.render(
        "table.html",
        minijinja::context! {
            title => format!("{table} · {method} · {organism}"),
            entry => ser(&entry),
            table => ser(&shown),
            sort,
            desc,
            page,
            pages,
            first_row => page * PAGE_ROWS,
            colour => colour.params(),
            layers => layers(&state, &model),
        },
    )?;
    Ok(Html(html))
}

/// `GET /results/{model}/{organism}/{method}/plot/{file}`: a PNG the method drew (only files its summary lists).
pub async fn plot_file(
    State(state): State<Arc<AppState>>,
    Path((model, organism, method, file)): Path<(String, String, String, String)>,
) -> Result<Response, PageError> {
    let entry = catalog::find(&state.results_dir, &model, &organism, &method)?;
    let listed = entry.summary.as_ref().is_some_and(|s| s.plots.contains(&file));
    if !listed {
        return Err(PageError::not_found(format!("method {method} drew no plot {file:?}")));
    }
    let bytes = std::fs::read(entry.dir.join(&file))
        .map_err(|e| PageError::not_found(format!("cannot read {file}: {e}; rerun the method")))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_escaped() {
        assert_eq!(url("a b&c=ü"), "a%20b%26c%3D%C3%BC");
    }
}
