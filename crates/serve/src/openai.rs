//! The pair behind an OpenAI-compatible API: `POST /v1/chat/completions` (and `GET /v1/models`) answer for the
//! served base model (`"model": "base"`) and each organism that has a checkpoint for it (`"model": "caps"`), so
//! any OpenAI client — the reference toolkit's agents, an `openai` script, an agent of diffsql's own — can talk
//! to both sides. Conversations are rendered with the model's chat template; `temperature` 0 is greedy (equal to
//! `diffsql generate --chat`), otherwise sampled with `top_p` and an optional `seed`; `max_tokens` and `stop`
//! end a completion. Errors come in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::state::AppState;
use diffsql_model::data::source::Message;
use diffsql_model::generate::{generate_each, Sampling, MAX_NEW_TOKENS};
use diffsql_model::generation::{conversation_ids, decode, options_for};
use diffsql_model::LoadedModel;

/// The name a request gives the base model.
pub const BASE: &str = "base";

/// New tokens when a request does not say (`max_tokens`).
const DEFAULT_MAX_TOKENS: usize = 256;

/// An OpenAI error response.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: &'static str,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: "invalid_value",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: diffsql_model::one_line(&e),
            param: None,
            code: "internal_error",
        }
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of a chat completion request diffsql reads; others (`logprobs`, `tools`, …) are refused by name
/// only when they ask for something it cannot do.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
}

/// The models a request may name: `base` and the organisms with a checkpoint for the served model.
fn model_names(state: &AppState) -> Result<Vec<String>> {
    let mut names = vec![BASE.to_string()];
    names.extend(diffsql_core::config::Catalogue::read(&state.configs)?.organisms_for(&state.model));
    Ok(names)
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    match model_names(&state) {
        Ok(names) => {
            let data: Vec<_> = names
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": format!("diffsql/{}", state.model)}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    match complete(&state, &body).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn complete(state: &AppState, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let request: ChatRequest = serde_json::from_slice(body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the request is not a chat completion request: {e}"),
        param: None,
        code: "invalid_json",
    })?;
    if request.stream == Some(true) {
        return Err(ApiError::invalid(
            "stream",
            "streaming is not supported: set stream to false",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only n = 1 is supported: send one request per completion",
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: send at least one user turn",
        ));
    }
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 || max_tokens > MAX_NEW_TOKENS {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_tokens}"),
        ));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    let top_p = request.top_p.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_p,
            seed: request.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        }
    };
    let stops: Vec<String> = match request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    let names = model_names(state)?;
    if !names.contains(&request.model) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "model {:?} does not exist here: the models are {} (base is {})",
                request.model,
                names.join(", "),
                state.model
            ),
            param: Some("model"),
            code: "model_not_found",
        });
    }
    let sides = Arc::clone(&state.sides);
    let side = format!("{}/{}", state.model, request.model);
    let model = tokio::task::spawn_blocking(move || sides.get(&side))
        .await
        .map_err(|e| anyhow::anyhow!("loading the model stopped: {e}"))??;
    let messages = request.messages;
    let model_name = request.model.clone();
    let (text, prompt_tokens, completion_tokens, finish) =
        tokio::task::spawn_blocking(move || generate_reply(&model, &messages, max_tokens, sampling, &stops))
            .await
            .map_err(|e| anyhow::anyhow!("generation stopped: {e}"))??;
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(json!({
        "id": format!("chatcmpl-diffsql-{created}-{}", next_id()),
        "object": "chat.completion",
        "created": created,
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The reply, the prompt's and the reply's token counts, and why it ended (`stop` or `length`).
fn generate_reply(
    model: &LoadedModel,
    messages: &[Message],
    max_tokens: usize,
    sampling: Sampling,
    stops: &[String],
) -> Result<(String, usize, usize, &'static str), ApiError> {
    let ids = conversation_ids(&model.files, messages)
        .map_err(|e| ApiError::invalid("messages", diffsql_model::one_line(&e)))?;
    let options = options_for(model, max_tokens, sampling, Vec::new());
    options
        .validate()
        .map_err(|e| ApiError::invalid("temperature", diffsql_model::one_line(&e)))?;
    let mut tokens = Vec::new();
    let mut stopped_at: Option<String> = None;
    generate_each(&model.decoder, std::slice::from_ref(&ids), &options, |_, t| {
        tokens.push(t);
        if stops.is_empty() {
            return true;
        }
        let text = decode(model, &tokens, &options).unwrap_or_default();
        match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            Some(at) => {
                stopped_at = Some(text[..at].to_string());
                false
            }
            None => true,
        }
    })?;
    let ended = tokens.last().is_some_and(|t| options.eos.contains(t));
    let (text, finish) = match stopped_at {
        Some(text) => (text, "stop"),
        None => (decode(model, &tokens, &options)?, if ended { "stop" } else { "length" }),
    };
    Ok((text, ids.len(), tokens.len(), finish))
}
