//! A client for OpenAI-compatible chat completions (OpenRouter, vLLM, llama.cpp's server, `diffsql serve`):
//! one blocking call per turn, a timeout per request, retries with exponential backoff on transient failures
//! (connection errors, 408, 429 and 5xx), and the token usage of every call added up.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Tokens a call (or a run) used, as the server counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.total_tokens += o.total_tokens;
    }
}

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The API's base URL, up to `/v1` (`https://openrouter.ai/api/v1`).
    pub base_url: String,
    /// The key, sent as a bearer token when given.
    pub api_key: Option<String>,
    pub model: String,
    pub temperature: f64,
    pub max_tokens: usize,
    /// Longest one request may take (connecting, sending, and reading the whole reply).
    pub timeout: Duration,
    /// Retries after the first try, on transient failures only.
    pub retries: u32,
    /// The first wait before a retry; each next one doubles.
    pub backoff: Duration,
}

/// An OpenAI-compatible chat completions client.
pub struct Client {
    options: ClientOptions,
    agent: ureq::Agent,
    /// Everything the calls of this client used.
    pub usage: Usage,
    pub calls: u64,
}

/// One reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub content: String,
    pub usage: Usage,
}

impl Client {
    pub fn new(options: ClientOptions) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(options.timeout).build();
        Self {
            options,
            agent,
            usage: Usage::default(),
            calls: 0,
        }
    }

    /// The key from the environment variable `var`; its absence is an error naming it.
    pub fn key_from_env(var: &str) -> Result<String> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .with_context(|| {
                format!("no API key: set the environment variable {var} (evaluation.api_key_env names it)")
            })
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.options.base_url.trim_end_matches('/'))
    }

    /// The assistant's reply to `messages`.
    pub fn chat(&mut self, messages: &[ChatMessage]) -> Result<Reply> {
        let body = json!({
            "model": self.options.model,
            "messages": messages,
            "temperature": self.options.temperature,
            "max_tokens": self.options.max_tokens,
        });
        let url = self.url();
        let mut wait = self.options.backoff;
        let mut attempt = 0;
        loop {
            let mut request = self.agent.post(&url).set("content-type", "application/json");
            if let Some(key) = &self.options.api_key {
                request = request.set("authorization", &format!("Bearer {key}"));
            }
            let outcome = request.send_json(&body);
            let transient = match &outcome {
                Ok(_) => false,
                Err(ureq::Error::Status(code, _)) => matches!(code, 408 | 429 | 500..=599),
                Err(ureq::Error::Transport(t)) => {
                    !matches!(t.kind(), ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme)
                }
            };
            if transient && attempt < self.options.retries {
                attempt += 1;
                std::thread::sleep(wait);
                wait *= 2;
                continue;
            }
            let tries = if attempt == 0 {
                String::new()
            } else {
                format!(" after {} tries", attempt + 1)
            };
            let response = match outcome {
                Ok(r) => r,
                Err(ureq::Error::Status(code, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    bail!("{url} answered {code}{tries}: {}", one_line(&message, 300));
                }
                Err(ureq::Error::Transport(t)) => {
                    let timeout = t.to_string().to_lowercase().contains("timed out");
                    if timeout {
                        bail!(
                            "{url} did not answer within {:?}{tries} (is the server up? evaluation timeouts are in the config)",
                            self.options.timeout
                        );
                    }
                    bail!("cannot reach {url}{tries}: {}", one_line(&t.to_string(), 300));
                }
            };
            let value: Value = response
                .into_json()
                .with_context(|| format!("{url} answered with something that is not JSON"))?;
            let content = value["choices"][0]["message"]["content"]
                .as_str()
                .with_context(|| {
                    format!(
                        "{url} answered without choices[0].message.content: {}",
                        one_line(&value.to_string(), 300)
                    )
                })?
                .to_string();
            let usage: Usage = serde_json::from_value(value["usage"].clone()).unwrap_or_default();
            self.usage += usage;
            self.calls += 1;
            return Ok(Reply { content, usage });
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
