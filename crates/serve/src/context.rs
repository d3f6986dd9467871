//! Tokens in their sequence, coloured by a per-token quantity (KL of the next-token distributions, or the norm
//! of the activation difference at a layer), with both models' next-token candidates: the context of every
//! top-token row and the token browser's text.

use std::collections::HashMap;

use anyhow::{Context, Result};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{col, lit, Expr, SessionContext};
use serde::Serialize;

use super::page::short_float;
use super::state::AppState;
use diffsql_core::cache::layout::BASE_ORGANISM;
use diffsql_core::cache::CacheLayout;
use diffsql_core::config::DictionaryKind;

/// Positions `start..=end` of one sequence; `target` is the position a row is about (highlighted).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub dataset: String,
    pub seq_id: i64,
    pub start: i64,
    pub end: i64,
    pub target: Option<i64>,
}

/// What colours the tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum Colour {
    /// KL(ft ‖ base) of the next-token distributions at the token (the `tokens` table).
    Kl,
    /// ‖ft − base‖₂ of the residual stream after `layer` (the `acts` table).
    NormDiff { layer: i32 },
    /// The activation of one latent (a PCA component: its coordinate) of a dictionary trained on the cache, at the
    /// dictionary's layer.
    Latent { dictionary: String, latent: i64 },
}

impl Colour {
    /// From the `color`, `layer`, `dictionary` and `latent` query parameters (`kl` when absent).
    pub fn parse(
        color: Option<&str>,
        layer: Option<i32>,
        dictionary: Option<&str>,
        latent: Option<i64>,
    ) -> Result<Self, String> {
        match (color.unwrap_or("kl"), layer) {
            ("kl", _) => Ok(Colour::Kl),
            ("normdiff", Some(layer)) => Ok(Colour::NormDiff { layer }),
            ("normdiff", None) => Err("color=normdiff needs a layer: add &layer=N".into()),
            ("latent", _) => match (dictionary.filter(|d| !d.is_empty()), latent) {
                (Some(d), Some(l)) if l >= 0 => Ok(Colour::Latent {
                    dictionary: d.to_string(),
                    latent: l,
                }),
                _ => Err("color=latent needs a dictionary and a latent: add &dictionary=NAME&latent=N (N ≥ 0; the overview lists the dictionaries)".into()),
            },
            (other, _) => Err(format!("unknown color {other:?}: use kl, normdiff or latent")),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Colour::Kl => "KL(ft ‖ base)".into(),
            Colour::NormDiff { layer } => format!("‖ft − base‖ at layer {layer}"),
            Colour::Latent { dictionary, latent } => format!("latent {latent} of {dictionary}"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Colour::Kl => "kl",
            Colour::NormDiff { .. } => "normdiff",
            Colour::Latent { .. } => "latent",
        }
    }

    /// The query parameters that choose this colour (`color=…&…`).
    pub fn query(&self) -> String {
        match self {
            Colour::Kl => "color=kl".into(),
            Colour::NormDiff { layer } => format!("color=normdiff&layer={layer}"),
            Colour::Latent { dictionary, latent } => {
                format!(
                    "color=latent&dictionary={}&latent={latent}",
                    super::results::url(dictionary)
                )
            }
        }
    }

    /// The colour as the templates see it: name, label, query and its parameters.
    pub fn params(&self) -> minijinja::Value {
        let (layer, dictionary, latent) = match self {
            Colour::Kl => (None, None, None),
            Colour::NormDiff { layer } => (Some(*layer), None, None),
            Colour::Latent { dictionary, latent } => (None, Some(dictionary.clone()), Some(*latent)),
        };
        minijinja::context! {
            name => self.name(),
            label => self.label(),
            query => self.query(),
            layer,
            dictionary,
            latent,
        }
    }
}

/// One token as shown.
#[derive(Debug, Clone, Serialize)]
pub struct ShownToken {
    pub pos: i64,
    /// The token's text with line breaks and tabs made visible.
    pub text: String,
    pub value: Option<f64>,
    /// Colour strength, 0–1: the value over the largest value shown on the page.
    pub alpha: f64,
    pub target: bool,
    /// Hover text: position, value and both models' most likely next tokens.
    pub tip: String,
}

/// The rows of `windows` (each a span of positions of one sequence), as a filter over a table with `dataset`,
/// `seq_id` and `pos`: values are bound as literals, never written into SQL text.
pub fn windows_filter(windows: &[Window]) -> Expr {
    windows
        .iter()
        .map(|w| {
            col("dataset")
                .eq(lit(w.dataset.clone()))
                .and(col("seq_id").eq(lit(w.seq_id)))
                .and(col("pos").between(lit(w.start as i32), lit(w.end as i32)))
        })
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// Next-token candidates of one model at one position: (token text, probability).
type Candidates = Vec<(String, f64)>;

pub fn candidates(
    batch: &RecordBatch,
    ids: &str,
    logprobs: &str,
    row: usize,
    vocab: &[String],
    k: usize,
) -> Candidates {
    let (Some(ids), Some(lps)) = (batch.column_by_name(ids), batch.column_by_name(logprobs)) else {
        return Vec::new();
    };
    if ids.is_null(row) || lps.is_null(row) {
        return Vec::new();
    }
    let ids = ids.as_list::<i32>().value(row);
    let lps = lps.as_list::<i32>().value(row);
    let (ids, lps) = (ids.as_primitive::<Int32Type>(), lps.as_primitive::<Float32Type>());
    (0..ids.len().min(lps.len()).min(k))
        .map(|i| {
            let id = ids.value(i);
            let text = vocab
                .get(id.max(0) as usize)
                .map_or_else(|| format!("<{id}>"), |t| visible(t));
            (text, (lps.value(i) as f64).exp())
        })
        .collect()
}

/// Token text with line breaks and tabs shown as symbols, so a token is never invisible.
pub fn visible(text: &str) -> String {
    text.replace('\n', "↵").replace('\t', "⇥").replace('\r', "␍")
}

fn candidates_line(label: &str, c: &Candidates) -> String {
    if c.is_empty() {
        return format!("{label}: (not cached)");
    }
    let items: Vec<String> = c.iter().map(|(t, p)| format!("{t:?} {:.2}", p)).collect();
    format!("{label}: {}", items.join(", "))
}

/// Key of one position.
type At = (String, i64, i64);

/// The tokens of each window of `organism`'s cached sequences, coloured by `colour`; with `candidates`, the
/// hover text also lists each model's five most likely next tokens. Positions the cache lacks are left out.
#[allow(clippy::too_many_arguments)]
pub async fn windows(
    state: &AppState,
    ctx: &SessionContext,
    vocab: &[String],
    model: &str,
    organism: &str,
    windows: &[Window],
    colour: &Colour,
    with_candidates: bool,
) -> Result<Vec<Vec<ShownToken>>> {
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let layout = CacheLayout::new(&state.cache_dir);
    let columns: &[&str] = if with_candidates {
        &["token", "kl", "topk_ids", "topk_logprobs"]
    } else {
        &["token", "kl"]
    };
    // Parquet reads are blocking; a big partition's first index build takes a moment.
    let (batches, base_batches) = tokio::task::block_in_place(|| -> Result<_> {
        let ft = state
            .token_indexes
            .get(&layout, model, organism)?
            .with_context(|| format!("no cached tokens of organism {organism} for model {model}"))?
            .read(windows, columns)?;
        let base = match (with_candidates, state.token_indexes.get(&layout, model, BASE_ORGANISM)?) {
            (true, Some(index)) => index.read(windows, &["topk_ids", "topk_logprobs"])?,
            _ => Vec::new(),
        };
        Ok((ft, base))
    })?;
    let mut base_next: HashMap<At, Candidates> = HashMap::new();
    for b in &base_batches {
        let (d, s, p) = key_columns(b)?;
        for r in 0..b.num_rows() {
            let at = (d.value(r).to_string(), s.value(r), p.value(r) as i64);
            base_next.insert(at, candidates(b, "topk_ids", "topk_logprobs", r, vocab, 5));
        }
    }
    let values = match colour {
        Colour::Kl => HashMap::new(),
        Colour::NormDiff { layer } => {
            tokio::task::block_in_place(|| norm_values(state, &layout, model, organism, *layer, windows))?
        }
        Colour::Latent { dictionary, latent } => {
            latent_values(&layout, ctx, model, organism, windows, dictionary, *latent).await?
        }
    };
    let mut found: HashMap<At, ShownToken> = HashMap::new();
    for b in &batches {
        let (d, s, p) = key_columns(b)?;
        let token = b
            .column_by_name("token")
            .context("tokens without token")?
            .as_string::<i32>();
        let kl = b
            .column_by_name("kl")
            .context("tokens without kl")?
            .as_primitive::<Float32Type>();
        for r in 0..b.num_rows() {
            let at = (d.value(r).to_string(), s.value(r), p.value(r) as i64);
            let value = match colour {
                Colour::Kl => kl.is_valid(r).then(|| kl.value(r) as f64),
                _ => values.get(&at).copied(),
            };
            let text = if token.is_valid(r) {
                visible(token.value(r))
            } else {
                String::new()
            };
            let mut tip = format!(
                "pos {} · {} {}",
                at.2,
                colour.label(),
                value.map_or("—".to_string(), short_float)
            );
            if with_candidates {
                let ft = candidates(b, "topk_ids", "topk_logprobs", r, vocab, 5);
                tip.push('\n');
                tip.push_str(&candidates_line("ft next", &ft));
                tip.push('\n');
                tip.push_str(&candidates_line("base next", base_next.get(&at).unwrap_or(&Vec::new())));
            }
            found.insert(
                at.clone(),
                ShownToken {
                    pos: at.2,
                    text,
                    value,
                    alpha: 0.0,
                    target: false,
                    tip,
                },
            );
        }
    }
    let max = found
        .values()
        .filter_map(|t| t.value)
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    Ok(windows
        .iter()
        .map(|w| {
            (w.start..=w.end)
                .filter_map(|pos| {
                    let mut t = found.get(&(w.dataset.clone(), w.seq_id, pos))?.clone();
                    t.target = w.target == Some(pos);
                    t.alpha = match t.value {
                        Some(v) if max > 0.0 && v.is_finite() => (v.abs() / max).clamp(0.0, 1.0),
                        _ => 0.0,
                    };
                    Some(t)
                })
                .collect()
        })
        .collect())
}

/// ‖ft − base‖₂ at `layer` for the windows' positions, reading only the Parquet pages that hold them in both
/// activation partitions (their row indexes, like the tokens ones).
fn norm_values(
    state: &AppState,
    layout: &CacheLayout,
    model: &str,
    organism: &str,
    layer: i32,
    windows: &[Window],
) -> Result<HashMap<At, f64>> {
    let read = |side: &str| -> Result<HashMap<At, Vec<f32>>> {
        let key = diffsql_core::cache::PartitionKey::activations(model, side, layer);
        let index = state.token_indexes.partition(layout, key)?.with_context(|| {
            format!(
                "no activations of {side} at layer {layer} for model {model}: the layers cached are on the overview"
            )
        })?;
        let mut out = HashMap::new();
        for b in index.read(windows, &["act"])? {
            let (d, s, p) = key_columns(&b)?;
            let schema = b.schema();
            let field = schema.field_with_name("act")?;
            let encoding = diffsql_core::cache::vectors::VectorEncoding::from_field(field)?;
            let act = b.column_by_name("act").context("activations without act")?;
            let rows = encoding.decode_to_f32_list(act.as_fixed_size_binary())?;
            let rows = rows.as_list::<i32>();
            for r in 0..b.num_rows() {
                let v = rows.value(r);
                let v = v.as_primitive::<Float32Type>();
                out.insert(
                    (d.value(r).to_string(), s.value(r), p.value(r) as i64),
                    v.values().to_vec(),
                );
            }
        }
        Ok(out)
    };
    let base = read(BASE_ORGANISM)?;
    let ft = read(organism)?;
    Ok(ft
        .into_iter()
        .filter_map(|(at, f)| {
            let b = base.get(&at)?;
            let norm = f
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            Some((at, norm))
        })
        .collect())
}

/// The dictionary `name` trained for `organism`, checked to have latent `latent`; the error says what exists.
pub fn find_dictionary(
    layout: &CacheLayout,
    model: &str,
    organism: &str,
    name: &str,
    latent: i64,
) -> Result<diffsql_train::store::DictionaryManifest, String> {
    let all = diffsql_train::store::list(layout).map_err(|e| diffsql_model::one_line(&e))?;
    let mine: Vec<diffsql_train::store::DictionaryManifest> = all
        .into_iter()
        .filter(|m| m.id.model == model && m.id.organism == organism)
        .collect();
    let names: Vec<String> = mine.iter().map(|m| m.id.name.clone()).collect();
    let m = mine.into_iter().find(|m| m.id.name == name).ok_or_else(|| {
        format!(
            "no dictionary {name:?} trained for organism {organism} (there are: {}); train one with `diffsql run pipeline.mode=diffing diffing/method=crosscoder organism={organism}`",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    })?;
    if latent < 0 || latent as usize >= m.latents {
        return Err(format!(
            "{name} has {} latents (0 to {}); latent {latent} is not one",
            m.latents,
            m.latents.saturating_sub(1)
        ));
    }
    Ok(m)
}

impl Colour {
    /// Checks that a latent colour names a dictionary of `organism` and one of its latents (a 404 or 400 page
    /// otherwise, before any work).
    pub fn check(&self, layout: &CacheLayout, model: &str, organism: &str) -> Result<(), super::page::PageError> {
        match self {
            Colour::Latent { dictionary, latent } => find_dictionary(layout, model, organism, dictionary, *latent)
                .map(|_| ())
                .map_err(super::page::PageError::bad_request),
            _ => Ok(()),
        }
    }
}

/// Per position of the windows, the activation of latent `latent` of `dictionary` (0 where it is not active; a PCA
/// component: its coordinate), computed by the dictionary's SQL encoder over `acts` at the dictionary's layer.
async fn latent_values(
    layout: &CacheLayout,
    ctx: &SessionContext,
    model: &str,
    organism: &str,
    windows: &[Window],
    dictionary: &str,
    latent: i64,
) -> Result<HashMap<At, f64>> {
    let m = find_dictionary(layout, model, organism, dictionary, latent).map_err(anyhow::Error::msg)?;
    let name = lit(m.id.to_string());
    let udf = |f: &str| ctx.udf(f);
    let difference = || -> datafusion::common::Result<Expr> { Ok(udf("vec_sub")?.call(vec![col("ft"), col("base")])) };
    let value = match m.kind {
        DictionaryKind::Crosscoder => udf("crosscoder_encode")?.call(vec![col("base"), col("ft"), name]),
        DictionaryKind::SaeDifference => udf("sae_encode")?.call(vec![difference()?, name]),
        DictionaryKind::Pca => udf("pca_project")?.call(vec![difference()?, name, lit(latent + 1)]),
    };
    let rows = ctx
        .table("acts")
        .await?
        .filter(
            col("model")
                .eq(lit(model))
                .and(col("organism").eq(lit(organism)))
                .and(col("layer").eq(lit(m.layer)))
                .and(windows_filter(windows)),
        )?
        .select(vec![col("dataset"), col("seq_id"), col("pos"), value.alias("v")])?;
    let mut values = HashMap::new();
    for b in rows.collect().await? {
        let (d, s, p) = key_columns(&b)?;
        let column = b.column(3);
        for r in 0..b.num_rows() {
            let at = (d.value(r).to_string(), s.value(r), p.value(r) as i64);
            if column.is_null(r) {
                continue;
            }
            let value = match m.kind {
                // A PCA projection: the list of coordinates, this component's is the last.
                DictionaryKind::Pca => {
                    let list = column.as_list::<i32>().value(r);
                    let list = cast(&list, &DataType::Float64)?;
                    let list = list.as_primitive::<Float64Type>();
                    if list.is_empty() {
                        0.0
                    } else {
                        list.value(list.len() - 1)
                    }
                }
                // Active latents as {latent, value}: this latent's value, or 0 when it is not active.
                DictionaryKind::Crosscoder | DictionaryKind::SaeDifference => {
                    let list = column.as_list::<i32>().value(r);
                    let entries = list.as_struct();
                    let ids = cast(
                        entries.column_by_name("latent").context("latents without latent")?,
                        &DataType::Int64,
                    )?;
                    let vals = cast(
                        entries.column_by_name("value").context("latents without value")?,
                        &DataType::Float64,
                    )?;
                    let (ids, vals) = (ids.as_primitive::<Int64Type>(), vals.as_primitive::<Float64Type>());
                    (0..ids.len())
                        .find(|&i| ids.value(i) == latent)
                        .map_or(0.0, |i| vals.value(i))
                }
            };
            values.insert(at, value);
        }
    }
    Ok(values)
}

/// The dataset, seq_id and pos columns of a batch of tokens.
pub fn key_columns(
    b: &RecordBatch,
) -> Result<(
    &datafusion::arrow::array::StringArray,
    &datafusion::arrow::array::PrimitiveArray<Int64Type>,
    &datafusion::arrow::array::PrimitiveArray<Int32Type>,
)> {
    let column = |name: &str| b.column_by_name(name).with_context(|| format!("tokens without {name}"));
    Ok((
        column("dataset")?.as_string::<i32>(),
        column("seq_id")?.as_primitive::<Int64Type>(),
        column("pos")?.as_primitive::<Int32Type>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_with_clear_errors() {
        assert_eq!(Colour::parse(None, None, None, None), Ok(Colour::Kl));
        assert_eq!(
            Colour::parse(Some("normdiff"), Some(2), None, None),
            Ok(Colour::NormDiff { layer: 2 })
        );
        assert!(Colour::parse(Some("normdiff"), None, None, None)
            .unwrap_err()
            .contains("layer=N"));
        let latent = Colour::parse(Some("latent"), None, Some("sae L1"), Some(7)).unwrap();
        assert_eq!(latent.query(), "color=latent&dictionary=sae%20L1&latent=7");
        assert_eq!(latent.label(), "latent 7 of sae L1");
        assert!(Colour::parse(Some("latent"), None, Some("x"), None)
            .unwrap_err()
            .contains("latent=N"));
        assert!(Colour::parse(Some("latent"), None, Some("x"), Some(-1)).is_err());
        assert!(Colour::parse(Some("heat"), None, None, None)
            .unwrap_err()
            .contains("unknown color"));
    }

    #[tokio::test]
    async fn window_filters_bind_names_with_quotes_as_values() {
        use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
        let batch = RecordBatch::try_from_iter(vec![
            (
                "dataset",
                std::sync::Arc::new(StringArray::from(vec!["it's", "it's", "it's", "other"])) as _,
            ),
            ("seq_id", std::sync::Arc::new(Int64Array::from(vec![3, 3, 4, 3])) as _),
            ("pos", std::sync::Arc::new(Int32Array::from(vec![1, 12, 2, 2])) as _),
        ])
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch).unwrap();
        let count = |windows: Vec<Window>| {
            let ctx = ctx.clone();
            async move {
                let df = ctx.table("t").await.unwrap().filter(windows_filter(&windows)).unwrap();
                df.count().await.unwrap()
            }
        };
        let w = |dataset: &str, seq_id| Window {
            dataset: dataset.into(),
            seq_id,
            start: 1,
            end: 9,
            target: Some(5),
        };
        assert_eq!(count(vec![w("it's", 3)]).await, 1);
        assert_eq!(count(vec![w("it's", 3), w("other", 3)]).await, 2);
        assert_eq!(count(vec![w("it's' OR '1'='1", 3)]).await, 0);
        assert_eq!(count(vec![]).await, 0);
        assert_eq!(visible("a\nb\tc"), "a↵b⇥c");
    }
}
