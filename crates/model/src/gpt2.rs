//! GPT-2: learned absolute positions, LayerNorm with biases, a plain `gelu_new` MLP, biases on every projection
//! and the head tied to the token embeddings. Its checkpoints store `Conv1D` weights (in × out) and one fused
//! query/key/value projection; [`standardise`] renames and splits them into the names every other family uses,
//! after any adapter (which targets GPT-2's own names) is merged.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;

use super::decoder::{DecoderSpec, Dims, Positions};
use super::layers::{transposed, Activation, NormKind, RopeScaling};
use super::weights::Weights;

/// HF `GPT2Config` fields diffsql reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// MLP width; `null` means 4 · n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn layer_norm_epsilon() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.scale_attn_by_inverse_layer_idx {
            bail!("GPT-2 configs with scale_attn_by_inverse_layer_idx = true are not supported");
        }
        if self.add_cross_attention {
            bail!("GPT-2 with cross-attention (an encoder-decoder) is not a decoder-only model diffsql runs");
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            bail!("n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        let head_dim = self.n_embd / self.n_head;
        let dims = Dims {
            hidden: self.n_embd,
            intermediate: self.n_inner.unwrap_or(4 * self.n_embd),
            heads: self.n_head,
            kv_heads: self.n_head,
            head_dim,
            vocab: self.vocab_size,
            layers: self.n_layer,
        };
        let act = Activation::parse(&self.activation_function)?;
        let base = DecoderSpec::llama_like(dims, self.layer_norm_epsilon, act, true, (10000.0, RopeScaling::None));
        Ok(DecoderSpec {
            qkv_bias: true,
            o_bias: true,
            norm: NormKind::Layer,
            gated_mlp: false,
            positions: Positions::Learned { max: self.n_positions },
            attn_scale: if self.scale_attn_weights {
                1.0 / (head_dim as f64).sqrt()
            } else {
                1.0
            },
            ..base
        })
    }

    /// Renames GPT-2's weights (`transformer.h.0.attn.c_attn`, or without `transformer.` as in the original
    /// checkpoint) to the standard names, transposing Conv1D weights and splitting the fused projection.
    pub fn standardise(&self, weights: Weights) -> Result<Weights> {
        let source = weights.source().to_string();
        let mut tensors = weights.into_tensors();
        let prefix = if tensors.contains_key("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let mut take = |name: &str| -> Result<Tensor> {
            tensors.remove(&format!("{prefix}{name}")).with_context(|| {
                format!("weight {prefix}{name} is missing from {source} (is this a GPT-2 checkpoint?)")
            })
        };
        let h = self.n_embd;
        let mut out = std::collections::HashMap::new();
        out.insert("model.embed_tokens.weight".to_string(), take("wte.weight")?);
        out.insert("model.embed_positions.weight".to_string(), take("wpe.weight")?);
        out.insert("model.norm.weight".to_string(), take("ln_f.weight")?);
        out.insert("model.norm.bias".to_string(), take("ln_f.bias")?);
        for i in 0..self.n_layer {
            let (from, to) = (format!("h.{i}"), format!("model.layers.{i}"));
            for (norm, name) in [("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")] {
                for part in ["weight", "bias"] {
                    out.insert(format!("{to}.{name}.{part}"), take(&format!("{from}.{norm}.{part}"))?);
                }
            }
            // Conv1D stores (in, out): the transpose is the (out, in) of a linear layer.
            let qkv = transposed(&take(&format!("{from}.attn.c_attn.weight"))?)?;
            let qkv_bias = take(&format!("{from}.attn.c_attn.bias"))?;
            if qkv.dims() != [3 * h, h] {
                bail!(
                    "{source}: {from}.attn.c_attn.weight has shape {:?}, the config implies {:?}",
                    qkv.t()?.dims(),
                    [h, 3 * h]
                );
            }
            for (k, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                out.insert(
                    format!("{to}.self_attn.{proj}.weight"),
                    qkv.narrow(0, k * h, h)?.contiguous()?,
                );
                out.insert(
                    format!("{to}.self_attn.{proj}.bias"),
                    qkv_bias.narrow(0, k * h, h)?.contiguous()?,
                );
            }
            for (conv, linear) in [
                ("attn.c_proj", "self_attn.o_proj"),
                ("mlp.c_fc", "mlp.up_proj"),
                ("mlp.c_proj", "mlp.down_proj"),
            ] {
                let weight = take(&format!("{from}.{conv}.weight"))?;
                out.insert(format!("{to}.{linear}.weight"), transposed(&weight)?);
                out.insert(format!("{to}.{linear}.bias"), take(&format!("{from}.{conv}.bias"))?);
            }
        }
        // GPT-2 ties its head; a checkpoint may still carry a copy of it.
        tensors.remove("lm_head.weight");
        Ok(Weights::new(out, source))
    }
}
