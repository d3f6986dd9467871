//! The chat page: the base model and an organism answer the same prompt side by side, streamed token by token
//! (server-sent events); the models are loaded once per organism and kept.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use futures::Stream;
use serde::Deserialize;

use super::page::PageResult;
use super::state::AppState;
use diffsql_core::config::overrides;
use diffsql_model::generate::{generate_each, Sampling};
use diffsql_model::pair::{ModelPair, PairFiles};

/// Most new tokens one chat turn may ask for.
const MAX_CHAT_TOKENS: usize = 512;

/// Loaded model pairs, by organism.
#[derive(Default)]
pub struct ChatModels {
    pairs: Mutex<HashMap<String, Arc<ModelPair>>>,
}

impl ChatModels {
    /// The pair for `organism`, loaded on first use (on a blocking thread).
    async fn get(&self, state: &AppState, organism: &str) -> Result<Arc<ModelPair>> {
        if let Some(p) = self
            .pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(organism)
        {
            return Ok(Arc::clone(p));
        }
        let mut all = state.overrides.clone();
        all.push(overrides::parse(&format!("organism={organism}"))?);
        let settings = state.configs.resolve(&all)?;
        let root = state.configs.project_root();
        let pair = tokio::task::spawn_blocking(move || -> Result<ModelPair> {
            let device = diffsql_model::device::open(settings.preprocessing.device)?;
            PairFiles::open(&settings, &root)?.load(&settings, &device)
        })
        .await
        .context("loading the models stopped")??;
        let pair = Arc::new(pair);
        self.pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(organism.to_string(), Arc::clone(&pair));
        Ok(pair)
    }
}

/// The organisms the chat can load for the served base model (those with a checkpoint for it).
fn organisms_of(configs: &diffsql_core::config::ConfigDir, model: &str) -> Result<Vec<String>> {
    Ok(diffsql_core::config::Catalogue::read(configs)?.organisms_for(model))
}

/// `GET /chat`.
pub async fn page(State(state): State<Arc<AppState>>) -> PageResult {
    let organisms = organisms_of(&state.configs, &state.model).unwrap_or_default();
    let html = state.render(
        "chat.html",
        minijinja::context! {
            title => "Chat",
            model => state.model.clone(),
            organisms,
            max_tokens => MAX_CHAT_TOKENS,
        },
    )?;
    Ok(Html(html))
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    organism: String,
    prompt: String,
    #[serde(default = "default_tokens")]
    max_new_tokens: usize,
    /// Render the prompt as a user turn with the model's chat template (1) or continue it as text (0).
    #[serde(default)]
    chat: u8,
    /// Sample at this temperature (greedy when absent or 0).
    temperature: Option<f64>,
    #[serde(default)]
    seed: u64,
}

fn default_tokens() -> usize {
    64
}

/// One side's text so far, as an event.
fn text_event(side: &str, text: &str) -> Event {
    Event::default()
        .event("token")
        .data(serde_json::json!({"side": side, "text": text}).to_string())
}

/// `GET /chat/stream?organism=&prompt=&max_new_tokens=&chat=&temperature=&seed=`: events `token` (a side's text so
/// far), `done` (a side finished, with tokens/s) and `error` (one line).
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Query(request): Query<ChatRequest>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        if let Err(e) = converse(&state, request, tx.clone()).await {
            let _ = tx
                .send(Event::default().event("error").data(diffsql_model::one_line(&e)))
                .await;
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn converse(state: &AppState, request: ChatRequest, tx: tokio::sync::mpsc::Sender<Event>) -> Result<()> {
    if request.prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty: type something to send");
    }
    if request.max_new_tokens == 0 || request.max_new_tokens > MAX_CHAT_TOKENS {
        anyhow::bail!(
            "max_new_tokens must be between 1 and {MAX_CHAT_TOKENS}, got {}",
            request.max_new_tokens
        );
    }
    let organisms = organisms_of(&state.configs, &state.model)?;
    if !organisms.contains(&request.organism) {
        anyhow::bail!(
            "unknown organism {:?} for model {}: the organisms with a checkpoint for it are {}",
            request.organism,
            state.model,
            organisms.join(", ")
        );
    }
    let sampling = match request.temperature {
        Some(t) if t > 0.0 => Sampling::Sample {
            temperature: t,
            top_p: 1.0,
            seed: request.seed,
        },
        _ => Sampling::Greedy,
    };
    let pair = state.chat_models.get(state, &request.organism).await?;
    let mut sides = Vec::new();
    for side in ["base", "organism"] {
        let (pair, tx, prompt) = (Arc::clone(&pair), tx.clone(), request.prompt.clone());
        let (chat, max_new_tokens) = (request.chat == 1, request.max_new_tokens);
        sides.push(tokio::task::spawn_blocking(move || -> Result<()> {
            let model = if side == "base" { &pair.base } else { &pair.organism };
            let ids = diffsql_model::generation::prompt_ids(&model.files, &prompt, chat)?;
            let options = diffsql_model::generation::options_for(model, max_new_tokens, sampling, Vec::new());
            let started = Instant::now();
            let mut tokens = Vec::new();
            let out = generate_each(&model.decoder, &[ids], &options, |_, t| {
                tokens.push(t);
                let text = diffsql_model::generation::decode(model, &tokens, &options).unwrap_or_default();
                tx.blocking_send(text_event(side, &text)).is_ok()
            })?;
            let n = out.first().map_or(0, Vec::len);
            let seconds = started.elapsed().as_secs_f64();
            let done =
                serde_json::json!({"side": side, "tokens": n, "tokens_per_second": n as f64 / seconds.max(1e-9)});
            let _ = tx.blocking_send(Event::default().event("done").data(done.to_string()));
            Ok(())
        }));
    }
    for s in sides {
        s.await.context("generation stopped")??;
    }
    Ok(())
}
