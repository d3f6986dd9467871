//! The agent's tools over diffsql itself: the pair answering a prompt (in this process, on the configured
//! device, or through any OpenAI-compatible endpoint such as `diffsql serve`), and read-only SQL over the
//! cache with a row limit.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::Value;

use super::client::{ChatMessage, Client, ClientOptions};
use diffsql_model::data::source::Message;
use diffsql_model::generate::{generate, Sampling};
use diffsql_model::generation::{conversation_ids, decode, options_for};
use diffsql_model::LoadedModel;

/// How `ask_model` generates.
#[derive(Debug, Clone, Copy)]
pub struct AskOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
}

fn reply(model: &LoadedModel, prompt: &str, options: AskOptions) -> Result<String> {
    let turn = Message {
        role: "user".into(),
        content: prompt.into(),
    };
    let ids = conversation_ids(&model.files, std::slice::from_ref(&turn))?;
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

/// `query`: one read-only statement over the cache at `cache_dir` (the results folder protected), at most
/// `limit` rows, as a list of JSON objects (vectors as arrays).
pub fn sql_query(
    cache_dir: &Path,
    protected: Vec<std::path::PathBuf>,
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
