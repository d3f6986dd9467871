//! The overview page: what the cache holds (models, organisms, layers, datasets, size) and which methods have
//! results, with their dates.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, UInt64Type};
use indicatif::HumanBytes;
use serde::Serialize;

use super::catalog;
use super::page::{ser, PageResult};
use super::state::AppState;

/// One model in the cache.
#[derive(Debug, Default, Serialize)]
struct CachedModel {
    name: String,
    organisms: Vec<String>,
    layers: Vec<i32>,
    bytes: u64,
    size: String,
    datasets: Vec<CachedDataset>,
}

#[derive(Debug, Serialize)]
struct CachedDataset {
    name: String,
    sequences: i64,
    tokens: i64,
}

/// What the cache holds, or why it cannot be read.
async fn cache_models(state: &AppState) -> anyhow::Result<Vec<CachedModel>> {
    let ctx = state.session()?;
    let mut models: BTreeMap<String, CachedModel> = BTreeMap::new();
    let batches = ctx
        .sql("SELECT model, organism, layer, bytes FROM cache_info()")
        .await?
        .collect()
        .await?;
    for b in &batches {
        let (model, organism) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
        let (layer, bytes) = (
            b.column(2).as_primitive::<Int32Type>(),
            b.column(3).as_primitive::<UInt64Type>(),
        );
        for r in 0..b.num_rows() {
            let m = models.entry(model.value(r).to_string()).or_default();
            m.name = model.value(r).to_string();
            m.bytes += bytes.value(r);
            if organism.is_valid(r) && !m.organisms.iter().any(|o| o == organism.value(r)) {
                m.organisms.push(organism.value(r).to_string());
            }
            if layer.is_valid(r) && !m.layers.contains(&layer.value(r)) {
                m.layers.push(layer.value(r));
            }
        }
    }
    // A cache without sequences yet (an interrupted first run) still lists its partitions.
    if let Ok(df) = ctx
        .sql("SELECT model, dataset, count(*) AS sequences, CAST(sum(n_tokens) AS BIGINT) AS tokens FROM sequences GROUP BY model, dataset ORDER BY model, dataset")
        .await
    {
        for b in df.collect().await.unwrap_or_default() {
            let (model, dataset) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
            let (sequences, tokens) = (b.column(2).as_primitive::<Int64Type>(), b.column(3).as_primitive::<Int64Type>());
            for r in 0..b.num_rows() {
                if let Some(m) = models.get_mut(model.value(r)) {
                    m.datasets.push(CachedDataset {
                        name: dataset.value(r).to_string(),
                        sequences: sequences.value(r),
                        tokens: tokens.value(r),
                    });
                }
            }
        }
    }
    let mut out: Vec<CachedModel> = models.into_values().collect();
    for m in &mut out {
        m.layers.sort_unstable();
        m.size = HumanBytes(m.bytes).to_string();
        m.organisms
            .sort_by_key(|o| (o != diffsql_core::cache::layout::BASE_ORGANISM, o.clone()));
    }
    Ok(out)
}

/// `GET /`.
pub async fn page(State(state): State<Arc<AppState>>) -> PageResult {
    let (models, cache_problem) = match cache_models(&state).await {
        Ok(m) => (m, None),
        Err(e) => (Vec::new(), Some(diffsql_model::one_line(&e))),
    };
    let results = catalog::scan(&state.results_dir);
    let agents = super::agents::scan(&state.results_dir);
    let total: u64 = models.iter().map(|m| m.bytes).sum();
    let html = state.render(
        "overview.html",
        minijinja::context! {
            title => "Overview",
            cache_dir => state.cache_dir.display().to_string(),
            results_dir => state.results_dir.display().to_string(),
            cache_size => HumanBytes(total).to_string(),
            cache_problem,
            models => ser(&models),
            results => ser(&results),
            agents => ser(&agents),
        },
    )?;
    Ok(Html(html))
}
