//! Which family a checkpoint is, read from its `config.json`: the enum every load dispatches on.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::decoder::DecoderSpec;
use super::hf_config::parse;
use super::{gemma2, gemma3, gpt2, llama, mistral, qwen2, qwen2_5_vl, qwen3};

/// Architectures diffsql runs, for messages.
pub const SUPPORTED: &str =
    "gpt2, llama, mistral, qwen2, qwen2_5_vl (its language model), qwen3, gemma2, gemma3 (gemma3_text)";

/// A parsed model config.
#[derive(Debug, Clone)]
pub enum Architecture {
    Gpt2(gpt2::Config),
    Llama(llama::Config),
    Mistral(mistral::Config),
    Qwen2(qwen2::Config),
    Qwen2_5Vl(qwen2_5_vl::Config),
    Qwen3(qwen3::Config),
    Gemma2(gemma2::Config),
    Gemma3(gemma3::Config),
}

impl Architecture {
    /// Parses `config.json` text; `what` names the file in errors.
    pub fn from_config_json(text: &str, what: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or_default();
        Ok(match model_type {
            "gpt2" => Self::Gpt2(parse(text, what)?),
            "llama" => Self::Llama(parse(text, what)?),
            "mistral" => Self::Mistral(parse(text, what)?),
            "qwen2" => Self::Qwen2(parse(text, what)?),
            "qwen2_5_vl" => Self::Qwen2_5Vl(qwen2_5_vl::Config::from_json(&v, text, what)?),
            "qwen3" => Self::Qwen3(parse(text, what)?),
            "gemma2" => Self::Gemma2(parse(text, what)?),
            "gemma3_text" => Self::Gemma3(parse(text, what)?),
            "gemma3" => {
                // The multimodal wrapper: the language model's config is nested.
                let text_config = v
                    .get("text_config")
                    .with_context(|| format!("{what}: gemma3 config has no text_config"))?;
                Self::Gemma3(parse(&text_config.to_string(), &format!("{what} (text_config)"))?)
            }
            "" => bail!("{what} has no model_type; diffsql supports {SUPPORTED}"),
            other => bail!("unsupported architecture {other:?} in {what}; diffsql supports {SUPPORTED}"),
        })
    }

    /// The family's name (its `model_type`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Llama(_) => "llama",
            Self::Mistral(_) => "mistral",
            Self::Qwen2(_) => "qwen2",
            Self::Qwen2_5Vl(_) => "qwen2_5_vl",
            Self::Qwen3(_) => "qwen3",
            Self::Gemma2(_) => "gemma2",
            Self::Gemma3(_) => "gemma3",
        }
    }

    /// The decoder it describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        match self {
            Self::Gpt2(c) => c.spec(),
            Self::Llama(c) => c.spec(),
            Self::Mistral(c) => c.spec(),
            Self::Qwen2(c) => c.spec(),
            Self::Qwen2_5Vl(c) => c.spec(),
            Self::Qwen3(c) => c.spec(),
            Self::Gemma2(c) => c.spec(),
            Self::Gemma3(c) => c.spec(),
        }
    }
}
