//! GGUF checkpoints (llama.cpp's format): the config is rebuilt from GGUF metadata as an HF `config.json`,
//! tensors are dequantised to f32 and renamed to HF names, and llama.cpp's conversions are undone (the
//! rotary row permutation of Llama's q/k projections, the +1 folded into Gemma's norms), so the result
//! equals what transformers loads from the same file. The tokenizer comes from a `tokenizer.json` beside it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::arch::Architecture;
use super::weights::Weights;

/// A GGUF file read into an architecture and HF-named weights.
pub struct GgufModel {
    pub architecture: Architecture,
    pub weights: Weights,
    /// The chat template stored in the metadata, if any.
    pub chat_template: Option<String>,
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn meta_u(c: &Content, key: &str) -> Result<usize> {
    let v = meta(c, key).with_context(|| format!("GGUF metadata lacks {key}"))?;
    Ok(v.to_u64()
        .or_else(|_| v.to_u32().map(u64::from))
        .or_else(|_| v.to_i32().map(|x| x as u64))? as usize)
}

fn meta_f(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

/// Reads a GGUF file.
pub fn read(path: &Path, dtype: DType) -> Result<GgufModel> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content =
        Content::read(&mut file).map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
    let arch = meta(&content, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .with_context(|| format!("{} has no general.architecture", path.display()))?;
    let config = hf_config(&content, &arch)?;
    let what = format!("{} (config from GGUF metadata)", path.display());
    let architecture = Architecture::from_config_json(&config.to_string(), &what)?;
    let spec = architecture.spec()?;
    let gemma = arch.starts_with("gemma");
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name, gemma) else { continue };
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .with_context(|| format!("cannot read tensor {name} of {}", path.display()))?;
        let mut t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if gemma && hf.ends_with("norm.weight") {
            t = (t - 1.0)?;
        }
        if arch == "llama" {
            if hf.ends_with("self_attn.q_proj.weight") {
                t = unpermute(&t, spec.heads)?;
            } else if hf.ends_with("self_attn.k_proj.weight") {
                t = unpermute(&t, spec.kv_heads)?;
            }
        }
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    let chat_template = meta(&content, "tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    Ok(GgufModel {
        architecture,
        weights: Weights::new(tensors, path.display().to_string()),
        chat_template,
    })
}

/// Undoes llama.cpp's permutation of q/k rows (it interleaves the two rotary halves of each head).
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, input) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, input))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, input))?)
}

/// llama.cpp's permutation (the inverse of [`unpermute`]), for writing test files.
pub fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, input) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, 2, half, input))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, input))?)
}

/// The HF name of a GGUF tensor (None for tensors diffsql does not use, such as rope frequency tables).
pub fn hf_name(gguf: &str, gemma: bool) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match (module, gemma) {
        ("attn_norm", _) => "input_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("attn_q_norm", _) => "self_attn.q_norm",
        ("attn_k_norm", _) => "self_attn.k_norm",
        ("ffn_gate", _) => "mlp.gate_proj",
        ("ffn_up", _) => "mlp.up_proj",
        ("ffn_down", _) => "mlp.down_proj",
        ("ffn_norm", false) => "post_attention_layernorm",
        ("ffn_norm", true) => "pre_feedforward_layernorm",
        ("post_attention_norm", true) => "post_attention_layernorm",
        ("post_ffw_norm", true) => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// An HF config.json equivalent to the GGUF metadata of architecture `arch`.
fn hf_config(c: &Content, arch: &str) -> Result<serde_json::Value> {
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = meta_u(c, &k("embedding_length"))?;
    let heads = meta_u(c, &k("attention.head_count"))?;
    let vocab = match c.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0],
        None => bail!("GGUF has no token_embd.weight"),
    };
    let head_dim = meta_u(c, &k("attention.key_length")).unwrap_or(hidden / heads);
    let mut config = json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta_u(c, &k("feed_forward_length"))?,
        "num_hidden_layers": meta_u(c, &k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta_u(c, &k("attention.head_count_kv")).unwrap_or(heads),
        "head_dim": head_dim,
        "rms_norm_eps": meta_f(c, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        "tie_word_embeddings": !c.tensor_infos.contains_key("output.weight"),
    });
    let obj = config.as_object_mut().expect("an object");
    if let Some(theta) = meta_f(c, &k("rope.freq_base")) {
        obj.insert("rope_theta".into(), json!(theta));
    }
    match arch {
        "llama" | "qwen2" | "qwen3" => {
            obj.insert("model_type".into(), json!(arch));
        }
        "gemma3" | "gemma2" => {
            obj.insert(
                "model_type".into(),
                json!(if arch == "gemma3" { "gemma3_text" } else { "gemma2" }),
            );
            obj.insert("query_pre_attn_scalar".into(), json!(head_dim));
            if let Ok(w) = meta_u(c, &k("attention.sliding_window")) {
                obj.insert("sliding_window".into(), json!(w));
            }
            if arch == "gemma3" {
                // llama.cpp fixes these for Gemma 3: every 6th layer global, local rotary base 10000.
                obj.insert("sliding_window_pattern".into(), json!(6));
                obj.insert("rope_local_base_freq".into(), json!(10000.0));
            } else {
                obj.insert(
                    "final_logit_softcapping".into(),
                    json!(meta_f(c, &k("final_logit_softcapping"))),
                );
                obj.insert(
                    "attn_logit_softcapping".into(),
                    json!(meta_f(c, &k("attn_logit_softcapping"))),
                );
            }
        }
        other => bail!(
            "unsupported GGUF architecture {other:?}; diffsql supports {}",
            super::arch::SUPPORTED
        ),
    }
    Ok(config)
}
