//! Qwen3 family: Llama's block with per-head RMS norms on queries and keys and an explicit head_dim.

use anyhow::Result;
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims};
use super::hf_config::{defaults, RopeFields};
use super::layers::Activation;

/// HF `Qwen3Config` fields diffsql reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(flatten)]
    pub rope: RopeFields,
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_sliding_window {
            anyhow::bail!("Qwen3 configs with use_sliding_window = true are not supported");
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads);
        let dims = Dims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim,
            vocab: self.vocab_size,
            layers: self.num_hidden_layers,
        };
        let act = Activation::parse(&self.hidden_act)?;
        let rope = self.rope.resolve(None, 10000.0)?;
        Ok(DecoderSpec {
            qkv_bias: self.attention_bias,
            qk_norm: true,
            ..DecoderSpec::llama_like(dims, self.rms_norm_eps, act, self.tie_word_embeddings, rope)
        })
    }
}
