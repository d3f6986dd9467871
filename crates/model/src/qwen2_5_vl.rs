//! Qwen2.5-VL's language model, run on text: a Qwen2 decoder read from the multimodal wrapper's config
//! (`text_config` as transformers 5 writes it, or the flat keys of the hub's configs). On text alone its
//! multimodal rotary (`mrope`) gives every token the same position on the time, height and width axes, which
//! is the 1-D rotary of Qwen2; the vision tower's weights (`visual.*`) are not loaded.

use anyhow::{Context, Result};
use serde_json::Value;

use super::decoder::DecoderSpec;
use super::hf_config::parse;
use super::qwen2;

/// The language model's config.
#[derive(Debug, Clone)]
pub struct Config(pub qwen2::Config);

impl Config {
    /// Reads the text model's config from the wrapper's `config.json` (`what` names the file in errors).
    pub fn from_json(v: &Value, text: &str, what: &str) -> Result<Self> {
        let config = match v.get("text_config").filter(|t| t.get("hidden_size").is_some()) {
            Some(text_config) => parse(&text_config.to_string(), &format!("{what} (text_config)"))?,
            None => parse(text, what).with_context(|| format!("{what}: a Qwen2.5-VL config without text_config"))?,
        };
        Ok(Self(config))
    }

    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        self.0.spec()
    }
}
