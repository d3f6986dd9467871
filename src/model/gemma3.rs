//! Gemma 3 text family (the seed's default): (1 + w) RMS norms, four per block, q/k norms, √d embedding
//! scale, sliding-window layers with their own rotary base, tied embeddings.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims, LayerAttention};
use super::hf_config::{defaults, RopeFields};
use super::layers::Activation;

/// HF `Gemma3TextConfig` fields diffsql reads.
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
    #[serde(default = "defaults::gelu_tanh", alias = "hidden_act")]
    pub hidden_activation: String,
    #[serde(default = "defaults::gemma_query_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Every n-th layer is global (transformers 4.x); `layer_types` wins when present.
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub rope: RopeFields,
}

/// Layer types from `layer_types`, or from the sliding pattern (layer i global when (i + 1) % n == 0).
pub fn layer_types(
    explicit: &Option<Vec<String>>,
    pattern: Option<usize>,
    layers: usize,
    default_pattern: usize,
) -> Result<Vec<String>> {
    if let Some(types) = explicit {
        if types.len() != layers {
            bail!("layer_types has {} entries for {layers} layers", types.len());
        }
        return Ok(types.clone());
    }
    let n = pattern.unwrap_or(default_pattern).max(1);
    Ok((0..layers)
        .map(|i| {
            if (i + 1) % n == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
            .to_string()
        })
        .collect())
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let types = layer_types(
            &self.layer_types,
            self.sliding_window_pattern,
            self.num_hidden_layers,
            6,
        )?;
        let mut layers = Vec::with_capacity(types.len());
        for t in &types {
            let sliding = match t.as_str() {
                "sliding_attention" => true,
                "full_attention" => false,
                other => bail!("unknown layer type {other:?} in layer_types"),
            };
            let (rope_theta, rope_scaling) = if sliding {
                let (theta, _) = self.rope.resolve(Some("sliding_attention"), 10000.0)?;
                // 4.x configs keep the local base apart and never scale local layers.
                let theta = if self.rope.rope_parameters.is_some() {
                    theta
                } else {
                    self.rope_local_base_freq.unwrap_or(10000.0)
                };
                (theta, super::layers::RopeScaling::None)
            } else {
                self.rope.resolve(Some("full_attention"), 1_000_000.0)?
            };
            layers.push(LayerAttention {
                window: if sliding { self.sliding_window } else { None },
                rope_theta,
                rope_scaling,
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
            qk_norm: true,
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
