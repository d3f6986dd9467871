//! The agent's tools over diffsql itself: the pair answering a prompt (in this process, on the configured
//! device, or through any OpenAI-compatible endpoint such as `diffsql serve`), and read-only SQL over the
//! cache with a row limit.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::Value;

use super::client::{ChatMessage, Client, ClientOptions};
use diffsql_model::generate::{generate, Sampling};
use diffsql_model::generation::{decode, options_for, prompt_ids};
use diffsql_model::LoadedModel;

/// How `ask_model` generates.
#[derive(Debug, Clone, Copy)]
pub struct AskOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
}

fn reply(model: &LoadedModel, prompt: &str, options: AskOptions) -> Result<String> {
    let ids = prompt_ids(&model.files, prompt, true)?;
    let generate_options = options_for(model, options.max_new_tokens, options.sampling, Vec::new());
    let out = generate(&model.decoder, &[ids], &generate_options)?;
    decode(model, &out[0], &generate_options)
}

/// `ask_model` in this process: the base model of `model` and `organism` (a side name as the SQL functions take
/// it), loaded once through `sides`, each prompt a user turn rendered with the chat template.
pub fn ask_locally(
    sides: Arc<diffsql_sql::intervene::Sides>,
    model: &str,
    organism: &str,
    options: AskOptions,
) -> impl FnMut(&str) -> Result<(String, String)> {
    let (base_side, organism_side) = (format!("{model}/base"), format!("{model}/{organism}"));
    move |prompt: &str| {
        let base = sides.get(&base_side)?;
        let organism = sides.get(&organism_side)?;
        Ok((reply(&base, prompt, options)?, reply(&organism, prompt, options)?))
    }
}

/// `ask_model` through an OpenAI-compatible endpoint that serves the pair (`diffsql serve`: models `base` and
/// the organism's name).
pub fn ask_endpoint(
    mut options: ClientOptions,
    organism: &str,
    max_new_tokens: usize,
) -> impl FnMut(&str) -> Result<(String, String)> {
    options.max_tokens = max_new_tokens;
    let mut base = Client::new(ClientOptions {
        model: "base".into(),
        ..options.clone()
    });
    let mut finetuned = Client::new(ClientOptions {
        model: organism.into(),
        ..options
    });
    move |prompt: &str| {
        let messages = [ChatMessage::new("user", prompt)];
        Ok((base.chat(&messages)?.content, finetuned.chat(&messages)?.content))
    }
}

/// `steer`: the organism's greedy continuations of plain-text prompts with `strength` × the mean difference
/// (ft − base) over cached positions `first..=last` at `layer` added to its residual stream after that layer at
/// every token — the activation difference lens's steering, through the SQL functions `steer` and
/// `mean_diff`, on the configured device.
pub struct SteerTool {
    ctx: datafusion::prelude::SessionContext,
    runtime: tokio::runtime::Runtime,
    model: String,
    organism: String,
    num_layers: usize,
    max_new_tokens: usize,
}

/// A steering request, from the agent's arguments.
#[derive(Debug, Clone)]
pub struct SteerRequest {
    pub prompts: Vec<String>,
    pub layer: Option<usize>,
    pub strength: f64,
    pub first: usize,
    pub last: usize,
}

impl SteerTool {
    pub fn new(
        cache_dir: &Path,
        configs: diffsql_core::config::ConfigDir,
        overrides: Vec<diffsql_core::config::Override>,
        model: &str,
        organism: &str,
        num_layers: usize,
        max_new_tokens: usize,
    ) -> Result<Self> {
        let access = diffsql_sql::SqlAccess {
            read_only: true,
            protected: Vec::new(),
        };
        let ctx = diffsql_sql::open_session_with(cache_dir, access)?;
        diffsql_sql::register_model_functions_with(&ctx, configs, overrides);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the steering runtime")?;
        Ok(Self {
            ctx,
            runtime,
            model: model.into(),
            organism: organism.into(),
            num_layers,
            max_new_tokens,
        })
    }

    /// The steered continuation of each prompt.
    pub fn steer(&self, r: &SteerRequest) -> Result<Value> {
        let layer = r.layer.unwrap_or(self.num_layers / 2);
        if layer >= self.num_layers {
            anyhow::bail!(
                "layer {layer} does not exist: the model has layers 0..{}",
                self.num_layers - 1
            );
        }
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut out = Vec::new();
        for prompt in &r.prompts {
            let sql = format!(
                "SELECT text FROM steer({side}, {prompt}, (SELECT mean_diff(base, ft) FROM acts WHERE model = {model} \
                 AND organism = {organism} AND layer = {layer} AND pos BETWEEN {first} AND {last}), {layer}, [{strength:?}], {n})",
                side = quote(&format!("{}/{}", self.model, self.organism)),
                prompt = quote(prompt),
                model = quote(&self.model),
                organism = quote(&self.organism),
                first = r.first,
                last = r.last,
                strength = r.strength,
                n = self.max_new_tokens,
            );
            let text = self.runtime.block_on(async {
                let batches = self.ctx.sql(&sql).await?.collect().await?;
                let column = batches
                    .first()
                    .context("steering returned no rows (is the layer cached? SELECT * FROM cache_info())")?
                    .column(0)
                    .clone();
                let text = datafusion::arrow::array::AsArray::as_string::<i32>(&column)
                    .value(0)
                    .to_string();
                anyhow::Ok(text)
            })?;
            out.push(serde_json::json!({"prompt": prompt, "steered_finetuned": text}));
        }
        Ok(
            serde_json::json!({"layer": layer, "strength": r.strength, "positions": [r.first, r.last], "generations": out}),
        )
    }
}

/// `query`: one read-only statement over the cache at `cache_dir` (the results folder protected), at most
/// `limit` rows, as a list of JSON objects (vectors as arrays).
///
/// `results` are registered beside the cache tables as `METHOD_TABLE` (the method results of the organism, each
/// a Parquet file), so that the agent can drill into any method's findings.
pub fn sql_query(
    cache_dir: &Path,
    protected: Vec<std::path::PathBuf>,
    results: &[(String, std::path::PathBuf)],
) -> Result<impl FnMut(&str, usize) -> Result<Value>> {
    let access = diffsql_sql::SqlAccess {
        read_only: true,
        protected,
    };
    let ctx = diffsql_sql::open_session_with(cache_dir, access)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the query runtime")?;
    for (name, path) in results {
        runtime
            .block_on(ctx.register_parquet(name, path.to_string_lossy().as_ref(), Default::default()))
            .with_context(|| format!("cannot read the result table {}", path.display()))?;
    }
    Ok(move |sql: &str, limit: usize| -> Result<Value> {
        runtime.block_on(async {
            let df = ctx.sql(sql).await?.limit(0, Some(limit))?;
            let batches = df.collect().await?;
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
                let refs: Vec<&datafusion::arrow::record_batch::RecordBatch> = batches.iter().collect();
                writer.write_batches(&refs)?;
                writer.finish()?;
            }
            if out.is_empty() {
                return Ok(Value::Array(Vec::new()));
            }
            Ok(serde_json::from_slice(&out)?)
        })
    })
}

/// Every method result table of an organism (`results/<model>/<organism>/<method>/<table>.parquet`) with the name
/// the agent's SQL sees it under, `<method>_<table>`.
pub fn result_tables(organism_results: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let Ok(methods) = std::fs::read_dir(organism_results) else {
        return out;
    };
    for method in methods.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()) {
        let method_name = method.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(&method) else {
            continue;
        };
        for file in files.filter_map(|e| e.ok().map(|e| e.path())) {
            if file.extension().is_some_and(|e| e == "parquet") {
                let table = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                out.push((format!("{method_name}_{table}"), file));
            }
        }
    }
    out.sort();
    out
}
