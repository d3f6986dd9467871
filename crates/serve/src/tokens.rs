//! The token browser: the cached sequences (sortable by KL, paged), and one sequence at a time with every token
//! coloured by a per-token quantity; clicking a token shows its statistics and both models' next-token candidates.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Html;
use axum::Json;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float32Type, Int32Type};
use datafusion::functions::unicode::expr_fn::substring;
use datafusion::prelude::{col, lit, Expr};
use serde::{Deserialize, Serialize};

use super::context::{self, Colour, Window};
use super::page::{ser, short_float, Cell, Grid, PageError, PageResult};
use super::results::{layers, url};
use super::state::AppState;
use super::token_index::SequenceStats;

/// Tokens one page of a sequence shows.
const WINDOW_TOKENS: i64 = 512;
/// Sequences one page of the list shows.
const LIST_ROWS: usize = 50;
/// Sort keys of the sequence list.
const LIST_SORTS: &[&str] = &["mean_kl", "max_kl", "n_tokens", "seq_id"];

#[derive(Debug, Deserialize, Default)]
pub struct TokensQuery {
    model: Option<String>,
    organism: Option<String>,
    dataset: Option<String>,
    seq: Option<i64>,
    start: Option<i64>,
    focus: Option<i64>,
    color: Option<String>,
    layer: Option<i32>,
    dictionary: Option<String>,
    latent: Option<i64>,
    sort: Option<String>,
    page: Option<usize>,
}

/// The organisms (not the base) with cached tokens for `model`.
fn organisms(state: &AppState, model: &str) -> anyhow::Result<Vec<String>> {
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    let mut out: Vec<String> = layout
        .partitions(diffsql_core::cache::Table::Tokens)?
        .into_iter()
        .filter(|(k, _)| k.model == model)
        .filter_map(|(k, _)| k.organism)
        .filter(|o| o != diffsql_core::cache::layout::BASE_ORGANISM)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The names of the dictionaries trained for `organism` (for the colour choice).
fn dictionaries(state: &AppState, model: &str, organism: &str) -> Vec<String> {
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    diffsql_train::store::list(&layout)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.id.model == model && m.id.organism == organism)
        .map(|m| m.id.name)
        .collect()
}

/// `GET /tokens`: the sequence list, or one sequence when `dataset` and `seq` are given.
pub async fn page(State(state): State<Arc<AppState>>, Query(q): Query<TokensQuery>) -> PageResult {
    let ctx = state.session()?;
    let model = q.model.clone().unwrap_or_else(|| state.model.clone());
    let known = organisms(&state, &model)?;
    if known.is_empty() {
        return Err(PageError::not_found(format!(
            "the cache at {} has no tokens of an organism of model {model:?}: run `diffsql preprocess organism=NAME model={model}`",
            state.cache_dir.display()
        )));
    }
    let organism = q.organism.clone().unwrap_or_else(|| known[0].clone());
    if !known.contains(&organism) {
        return Err(PageError::not_found(format!(
            "no cached tokens of organism {organism:?} for model {model} (there are: {})",
            known.join(", ")
        )));
    }
    let colour = Colour::parse(q.color.as_deref(), q.layer, q.dictionary.as_deref(), q.latent)
        .map_err(PageError::bad_request)?;
    colour.check(
        &diffsql_core::cache::CacheLayout::new(&state.cache_dir),
        &model,
        &organism,
    )?;
    let common = minijinja::context! {
        model => model.clone(),
        organism => organism.clone(),
        organisms => known,
        layers => layers(&state, &model),
        colour => colour.params(),
        dictionaries => dictionaries(&state, &model, &organism),
    };
    match (&q.dataset, q.seq) {
        (Some(dataset), Some(seq)) => {
            sequence(&state, &ctx, &model, &organism, dataset, seq, &q, &colour, common).await
        }
        _ => list(&state, &ctx, &model, &organism, &q, common).await,
    }
}

async fn list(
    state: &AppState,
    ctx: &datafusion::prelude::SessionContext,
    model: &str,
    organism: &str,
    q: &TokensQuery,
    common: minijinja::Value,
) -> PageResult {
    let sort = q.sort.clone().unwrap_or_else(|| "mean_kl".into());
    if !LIST_SORTS.contains(&sort.as_str()) {
        return Err(PageError::bad_request(format!(
            "cannot sort sequences by {sort:?}: use one of {}",
            LIST_SORTS.join(", ")
        )));
    }
    let page = q.page.unwrap_or(0);
    // Sorted and paged from the token index (built once per partition), texts read for the page's rows only.
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    let index = tokio::task::block_in_place(|| state.token_indexes.get(&layout, model, organism))?
        .ok_or_else(|| PageError::not_found(format!("no cached tokens of organism {organism} for model {model}")))?;
    let mut rows: Vec<&SequenceStats> = index
        .sequences()
        .iter()
        .filter(|s| q.dataset.as_deref().is_none_or(|d| s.dataset == d))
        .collect();
    let descending = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    match sort.as_str() {
        "mean_kl" => rows.sort_by(|a, b| descending(a.mean_kl(), b.mean_kl())),
        "max_kl" => rows.sort_by(|a, b| descending(a.max_kl, b.max_kl)),
        "n_tokens" => rows.sort_by_key(|r| std::cmp::Reverse(r.tokens)),
        _ => {}
    }
    let rows: Vec<&SequenceStats> = rows
        .into_iter()
        .skip(page.saturating_mul(LIST_ROWS))
        .take(LIST_ROWS)
        .collect();
    let windows: Vec<Window> = rows
        .iter()
        .map(|r| Window {
            dataset: r.dataset.clone(),
            seq_id: r.seq_id,
            start: 0,
            end: 0,
            target: None,
        })
        .collect();
    let mut texts: std::collections::HashMap<(String, i64), String> = std::collections::HashMap::new();
    if !windows.is_empty() {
        let keys = windows
            .iter()
            .map(|w| {
                col("dataset")
                    .eq(lit(w.dataset.clone()))
                    .and(col("seq_id").eq(lit(w.seq_id)))
            })
            .reduce(Expr::or)
            .unwrap_or(lit(false));
        let beginnings = ctx
            .table("sequences")
            .await?
            .filter(col("model").eq(lit(model)).and(keys))?
            .select(vec![
                col("dataset"),
                col("seq_id"),
                substring(col("text"), lit(1i64), lit(160i64)),
            ])?;
        for b in beginnings.collect().await? {
            let (d, s, t) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
                b.column(2).as_string::<i32>(),
            );
            for r in 0..b.num_rows() {
                texts.insert((d.value(r).to_string(), s.value(r)), t.value(r).to_string());
            }
        }
    }
    let integer = |n: i64| Cell {
        text: n.to_string(),
        number: Some(n as f64),
    };
    let number = |x: Option<f64>| match x {
        Some(x) => Cell {
            text: short_float(x),
            number: Some(x),
        },
        None => Cell {
            text: "NULL".into(),
            number: None,
        },
    };
    let grid = Grid {
        columns: ["dataset", "seq_id", "n_tokens", "mean_kl", "max_kl", "text"]
            .map(String::from)
            .to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    Cell {
                        text: r.dataset.clone(),
                        number: None,
                    },
                    integer(r.seq_id),
                    integer(r.tokens as i64),
                    number(r.mean_kl()),
                    number(r.max_kl),
                    Cell {
                        text: texts.remove(&(r.dataset.clone(), r.seq_id)).unwrap_or_default(),
                        number: None,
                    },
                ]
            })
            .collect(),
    };
    let html = state.render(
        "sequences.html",
        minijinja::context! {
            title => "Tokens",
            grid => ser(&grid),
            sort,
            page,
            dataset => q.dataset.clone(),
            ..common
        },
    )?;
    Ok(Html(html))
}

#[allow(clippy::too_many_arguments)]
async fn sequence(
    state: &AppState,
    ctx: &datafusion::prelude::SessionContext,
    model: &str,
    organism: &str,
    dataset: &str,
    seq: i64,
    q: &TokensQuery,
    colour: &Colour,
    common: minijinja::Value,
) -> PageResult {
    let lengths = ctx
        .table("sequences")
        .await?
        .filter(
            col("model")
                .eq(lit(model))
                .and(col("dataset").eq(lit(dataset)))
                .and(col("seq_id").eq(lit(seq))),
        )?
        .select(vec![col("n_tokens")])?;
    let mut length = None;
    for b in lengths.collect().await? {
        if b.num_rows() > 0 {
            length = Some(b.column(0).as_primitive::<Int32Type>().value(0) as i64);
        }
    }
    let length = length.ok_or_else(|| {
        PageError::not_found(format!(
            "no sequence {seq} in dataset {dataset:?} of model {model}: the sequence list links every one"
        ))
    })?;
    // The page holding `focus`, unless a start is given.
    let start = match (q.start, q.focus) {
        (Some(s), _) => s.clamp(0, (length - 1).max(0)),
        (None, Some(f)) => (f.clamp(0, (length - 1).max(0)) / WINDOW_TOKENS) * WINDOW_TOKENS,
        (None, None) => 0,
    };
    let end = (start + WINDOW_TOKENS - 1).min(length - 1);
    let window = Window {
        dataset: dataset.into(),
        seq_id: seq,
        start,
        end,
        target: q.focus,
    };
    let vocab = state.vocabulary(ctx, model).await?;
    let tokens = context::windows(state, ctx, &vocab, model, organism, &[window], colour, false)
        .await?
        .pop()
        .unwrap_or_default();
    let link = |s: i64| {
        format!(
            "/tokens?model={}&organism={}&dataset={}&seq={seq}&start={s}&{}",
            url(model),
            url(organism),
            url(dataset),
            colour.query()
        )
    };
    let html = state.render(
        "tokens.html",
        minijinja::context! {
            title => format!("{dataset} #{seq}"),
            dataset,
            seq,
            length,
            start,
            end,
            tokens => ser(&tokens),
            previous => (start > 0).then(|| link((start - WINDOW_TOKENS).max(0))),
            next => (end + 1 < length).then(|| link(end + 1)),
            ..common
        },
    )?;
    Ok(Html(html))
}

#[derive(Debug, Deserialize)]
pub struct TokenAt {
    model: String,
    organism: String,
    dataset: String,
    seq: i64,
    pos: i64,
}

/// What the browser's side panel shows for one token.
#[derive(Debug, Serialize)]
pub struct TokenDetail {
    pos: i64,
    token: String,
    kl: Option<f32>,
    ft_logprob: Option<f32>,
    base_logprob: Option<f32>,
    ft_next: Vec<(String, f64)>,
    base_next: Vec<(String, f64)>,
}

/// `GET /api/token?model=&organism=&dataset=&seq=&pos=`: one token's statistics as JSON.
pub async fn token_detail(
    State(state): State<Arc<AppState>>,
    Query(at): Query<TokenAt>,
) -> Result<Json<TokenDetail>, PageError> {
    let ctx = state.session()?;
    let vocab = state.vocabulary(&ctx, &at.model).await?;
    let window = Window {
        dataset: at.dataset.clone(),
        seq_id: at.seq,
        start: at.pos,
        end: at.pos,
        target: None,
    };
    let layout = diffsql_core::cache::CacheLayout::new(&state.cache_dir);
    let columns = ["token", "kl", "logprob", "topk_ids", "topk_logprobs"];
    let read = |organism: &str| -> anyhow::Result<Vec<datafusion::arrow::array::RecordBatch>> {
        match state.token_indexes.get(&layout, &at.model, organism)? {
            Some(index) => index.read(std::slice::from_ref(&window), &columns),
            None => Ok(Vec::new()),
        }
    };
    let (ft, base) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        Ok((read(&at.organism)?, read(diffsql_core::cache::layout::BASE_ORGANISM)?))
    })?;
    let mut detail = TokenDetail {
        pos: at.pos,
        token: String::new(),
        kl: None,
        ft_logprob: None,
        base_logprob: None,
        ft_next: Vec::new(),
        base_next: Vec::new(),
    };
    let mut found = false;
    for (is_base, batches) in [(false, &ft), (true, &base)] {
        for b in batches {
            let token = column(b, "token")?.as_string::<i32>();
            let kl = column(b, "kl")?.as_primitive::<Float32Type>();
            let lp = column(b, "logprob")?.as_primitive::<Float32Type>();
            for r in 0..b.num_rows() {
                let next = context::candidates(b, "topk_ids", "topk_logprobs", r, &vocab, usize::MAX);
                let logprob = lp.is_valid(r).then(|| lp.value(r));
                if is_base {
                    detail.base_logprob = logprob;
                    detail.base_next = next;
                } else {
                    found = true;
                    detail.token = context::visible(token.value(r));
                    detail.kl = kl.is_valid(r).then(|| kl.value(r));
                    detail.ft_logprob = logprob;
                    detail.ft_next = next;
                }
            }
        }
    }
    if !found {
        return Err(PageError::not_found(format!(
            "no cached token at position {} of sequence {} in {:?} for organism {}",
            at.pos, at.seq, at.dataset, at.organism
        )));
    }
    Ok(Json(detail))
}

fn column<'a>(
    b: &'a datafusion::arrow::array::RecordBatch,
    name: &str,
) -> anyhow::Result<&'a std::sync::Arc<dyn Array>> {
    b.column_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("tokens without {name}"))
}
