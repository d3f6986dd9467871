//! Mistral family (Mistral 7B, Devstral, Mistral Large): Llama's block with every layer's attention limited to a
//! sliding window of the last `sliding_window` tokens (global when the config gives none).

use anyhow::Result;
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims};
use super::hf_config::{defaults, RopeFields};
use super::layers::Activation;

/// HF `MistralConfig` fields diffsql reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `null` in some configs: then hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Keys each query sees, itself included; `null` for global attention (Mistral 7B v0.2 on).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(flatten)]
    pub rope: RopeFields,
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let dims = Dims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            vocab: self.vocab_size,
            layers: self.num_hidden_layers,
        };
        let act = Activation::parse(&self.hidden_act)?;
        let rope = self.rope.resolve(None, 10000.0)?;
        let mut spec = DecoderSpec::llama_like(dims, self.rms_norm_eps, act, self.tie_word_embeddings, rope);
        for layer in &mut spec.layers {
            layer.window = self.sliding_window;
        }
        Ok(spec)
    }
}
