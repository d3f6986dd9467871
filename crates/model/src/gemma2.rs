//! Gemma 2 family: Gemma's four (1 + w) norms per block, alternating sliding and global layers, and
//! tanh softcaps on attention scores and final logits.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims, LayerAttention};
use super::gemma3::layer_types;
use super::hf_config::{defaults, RopeFields};
use super::layers::Activation;

/// HF `Gemma2Config` fields diffsql reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "defaults::gemma_head_dim")]
    pub head_dim: usize,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// transformers reads only `hidden_activation` for Gemma 2 (hub configs carry `hidden_act` beside it).
    #[serde(default = "defaults::gelu_tanh")]
    pub hidden_activation: String,
    #[serde(default = "defaults::gemma_query_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub rope: RopeFields,
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        // Gemma 2 alternates: even layers slide, odd layers are global.
        let types = layer_types(&self.layer_types, Some(2), self.num_hidden_layers, 2)?;
        let (rope_theta, rope_scaling) = self.rope.resolve(None, 10000.0)?;
        let mut layers = Vec::with_capacity(types.len());
        for t in &types {
            let window = match t.as_str() {
                "sliding_attention" => self.sliding_window,
                "full_attention" => None,
                other => bail!("unknown layer type {other:?} in layer_types"),
            };
            layers.push(LayerAttention {
                window,
                rope_theta,
                rope_scaling: rope_scaling.clone(),
            });
        }
        let dims = Dims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            vocab: self.vocab_size,
            layers: layers.len(),
        };
        let act = Activation::parse(&self.hidden_activation)?;
        Ok(DecoderSpec {
            qk_norm: false,
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            ..DecoderSpec::gemma_like(
                dims,
                self.rms_norm_eps,
                act,
                self.tie_word_embeddings,
                self.query_pre_attn_scalar,
                layers,
            )
        })
    }
}
