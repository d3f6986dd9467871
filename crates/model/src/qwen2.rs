//! Qwen2 family: Llama's block with biases on the query, key and value projections.

use anyhow::Result;
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims};
use super::hf_config::{defaults, RopeFields};
use super::layers::Activation;

/// HF `Qwen2Config` fields diffsql reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers 5 writes `null`; only windowed layers past `max_window_layers` would use it.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(flatten)]
    pub rope: RopeFields,
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_sliding_window {
            anyhow::bail!("Qwen2 configs with use_sliding_window = true are not supported");
        }
        let head_dim = self.hidden_size / self.num_attention_heads;
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
            qkv_bias: true,
            qk_norm: false,
            ..DecoderSpec::llama_like(dims, self.rms_norm_eps, act, self.tie_word_embeddings, rope)
        })
    }
}
