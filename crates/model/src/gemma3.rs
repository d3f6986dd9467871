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
    /// transformers reads only `hidden_activation` for Gemma 2 and 3 (a `hidden_act` beside it is ignored).
    #[serde(default = "defaults::gelu_tanh")]
    pub hidden_activation: String,
    #[serde(default = "defaults::gemma_query_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Every n-th layer is global (transformers 4.x); `layer_types` wins when present. A config that went
    /// through transformers 5 may also hold `_sliding_window_pattern`: both are read (not a serde alias, which
    /// would make the pair a "duplicate field" error), see [`Config::sliding_pattern`].
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default, rename = "_sliding_window_pattern")]
    pub private_sliding_window_pattern: Option<usize>,
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
    /// The sliding-window pattern as transformers takes it: `sliding_window_pattern` (the key hub configs
    /// carry) before `_sliding_window_pattern` (what transformers 5 writes), whichever is present.
    pub fn sliding_pattern(&self) -> Option<usize> {
        self.sliding_window_pattern.or(self.private_sliding_window_pattern)
    }

    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let types = layer_types(&self.layer_types, self.sliding_pattern(), self.num_hidden_layers, 6)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<Config> {
        crate::hf_config::parse(
            &format!(
                r#"{{"vocab_size": 8, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 6,
                    "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 4{extra}}}"#
            ),
            "config.json",
        )
    }

    fn globals(c: &Config) -> Vec<bool> {
        c.spec().unwrap().layers.iter().map(|l| l.window.is_none()).collect()
    }

    #[test]
    fn both_spellings_of_the_sliding_pattern_are_accepted_in_transformers_order() {
        let both_agree =
            config(r#", "sliding_window": 4, "sliding_window_pattern": 3, "_sliding_window_pattern": 3"#).unwrap();
        assert_eq!(globals(&both_agree), [false, false, true, false, false, true]);
        // The hub key wins over transformers 5's private copy, as in transformers' Gemma3TextConfig.
        let disagree =
            config(r#", "sliding_window": 4, "sliding_window_pattern": 2, "_sliding_window_pattern": 3"#).unwrap();
        assert_eq!(globals(&disagree), [false, true, false, true, false, true]);
        let private_only = config(r#", "sliding_window": 4, "_sliding_window_pattern": 3"#).unwrap();
        assert_eq!(globals(&private_only), [false, false, true, false, false, true]);
        // layer_types wins over both.
        let typed = config(
            r#", "sliding_window": 4, "sliding_window_pattern": 2, "_sliding_window_pattern": 3,
               "layer_types": ["full_attention", "sliding_attention", "sliding_attention",
                               "sliding_attention", "sliding_attention", "sliding_attention"]"#,
        )
        .unwrap();
        assert_eq!(globals(&typed), [true, false, false, false, false, false]);
    }

    #[test]
    fn hidden_act_beside_hidden_activation_is_not_a_duplicate() {
        let c = config(r#", "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh""#).unwrap();
        assert_eq!(c.hidden_activation, "gelu_pytorch_tanh");
    }
}
