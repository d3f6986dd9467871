//! GGUF checkpoints (llama.cpp's format): the config is rebuilt from GGUF metadata as an HF `config.json`,
//! tensors are dequantised to f32 and renamed to HF names, and llama.cpp's conversions are undone (the
//! rotary row permutation of Llama's q/k projections, the +1 folded into Gemma's norms), so the result
//! equals what transformers loads from the same file. The tokenizer comes from a `tokenizer.json` beside it, or,
//! when there is none, from the file's own vocabulary and merges (`gguf_tokenizer`); the special-token settings
//! and chat template the metadata carries are read too.
//!
//! Opening reads only the header (metadata and tensor table). Weights are dequantised straight from a memory
//! map of the file into their final f32 buffers, in parallel over blocks of every tensor.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde_json::json;

use super::arch::Architecture;
use super::special_tokens::GgufTokenizerMeta;
use super::weights::Weights;
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

/// A GGUF file's header: what it is, without its weights.
pub struct GgufHeader {
    pub path: PathBuf,
    /// llama.cpp's architecture name (`llama`, `gemma3`, ...).
    arch: String,
    pub architecture: Architecture,
    pub tokenizer: GgufTokenizerMeta,
    content: Content,
}

impl std::fmt::Debug for GgufHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufHeader")
            .field("path", &self.path)
            .field("arch", &self.arch)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// Reads a GGUF file's header (metadata and tensor table), not its weights.
pub fn open(path: &Path) -> Result<GgufHeader> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = Content::read(&mut BufReader::with_capacity(1 << 20, file))
        .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
    let arch = meta(&content, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .with_context(|| format!("{} has no general.architecture", path.display()))?;
    let config = hf_config(&content, &arch)?;
    let what = format!("{} (config from GGUF metadata)", path.display());
    let architecture = Architecture::from_config_json(&config.to_string(), &what)?;
    let id = |key: &str| meta_u(&content, key).ok().and_then(|v| u32::try_from(v).ok());
    let tokenizer = GgufTokenizerMeta {
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: meta(&content, "tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()),
        chat_template: meta(&content, "tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
    };
    Ok(GgufHeader {
        path: path.to_path_buf(),
        arch,
        architecture,
        tokenizer,
        content,
    })
}

impl GgufHeader {
    /// The tokenizer the file's metadata describes (for a GGUF with no `tokenizer.json` beside it).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        super::gguf_tokenizer::from_gguf(&self.content, &self.arch)
            .with_context(|| format!("{}: building its tokenizer from its metadata", self.path.display()))
    }

    /// Dequantises every tensor diffsql uses into `dtype`, under its HF name.
    pub fn weights(&self, dtype: DType) -> Result<Weights> {
        let path = &self.path;
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and lives while the tensors are decoded from it; a checkpoint
        // changed by another process while it loads gives wrong numbers, as any reader of it would.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let spec = self.architecture.spec()?;
        let gemma = self.arch.starts_with("gemma");
        let mut tensors = HashMap::new();
        for (name, info) in &self.content.tensor_infos {
            let Some(hf) = hf_name(name, gemma) else { continue };
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                bail!(
                    "tensor {name} of {}: {elems} elements is not a multiple of the block size {block}",
                    path.display()
                );
            }
            let start = self.content.tensor_data_offset.saturating_add(info.offset) as usize;
            let len = elems / block * info.ggml_dtype.type_size();
            let bytes = map.get(start..start.saturating_add(len)).with_context(|| {
                format!(
                    "tensor {name} of {} lies beyond the end of the file (truncated download?)",
                    path.display()
                )
            })?;
            let mut values = dequantize(info.ggml_dtype, bytes, elems)
                .with_context(|| format!("tensor {name} of {}", path.display()))?;
            if gemma && hf.ends_with("norm.weight") {
                values.par_iter_mut().for_each(|v| *v -= 1.0);
            }
            let mut t = Tensor::from_vec(values, info.shape.clone(), &Device::Cpu)?;
            if self.arch == "llama" {
                if hf.ends_with("self_attn.q_proj.weight") {
                    t = unpermute(&t, spec.heads)?;
                } else if hf.ends_with("self_attn.k_proj.weight") {
                    t = unpermute(&t, spec.kv_heads)?;
                }
            }
            if dtype != DType::F32 {
                t = t.to_dtype(dtype)?;
            }
            tensors.insert(hf, t);
        }
        Ok(Weights::new(tensors, path.display().to_string()))
    }
}

/// Blocks per parallel task: large enough that scheduling costs nothing, small enough to balance 2–64 cores.
const BLOCKS_PER_TASK: usize = 1024;

/// Decodes `elems` values of `dtype` stored in `bytes` (llama.cpp's block layouts) into f32.
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], elems: usize) -> Result<Vec<f32>> {
    use k_quants::*;
    let plain = |d: DType| -> Result<Vec<f32>> {
        // Unquantised tensors: candle's (optimised) conversion from the raw little-endian values.
        Ok(Tensor::from_raw_buffer(bytes, d, &[elems], &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    };
    let mut out = vec![0f32; elems];
    match dtype {
        GgmlDType::F32 => return plain(DType::F32),
        GgmlDType::F16 => return plain(DType::F16),
        GgmlDType::BF16 => return plain(DType::BF16),
        GgmlDType::Q4_0 => decode_blocks::<BlockQ4_0>(bytes, &mut out)?,
        GgmlDType::Q4_1 => decode_blocks::<BlockQ4_1>(bytes, &mut out)?,
        GgmlDType::Q5_0 => decode_blocks::<BlockQ5_0>(bytes, &mut out)?,
        GgmlDType::Q5_1 => decode_blocks::<BlockQ5_1>(bytes, &mut out)?,
        GgmlDType::Q8_0 => decode_blocks::<BlockQ8_0>(bytes, &mut out)?,
        GgmlDType::Q8_1 => decode_blocks::<BlockQ8_1>(bytes, &mut out)?,
        GgmlDType::Q2K => decode_blocks::<BlockQ2K>(bytes, &mut out)?,
        GgmlDType::Q3K => decode_blocks::<BlockQ3K>(bytes, &mut out)?,
        GgmlDType::Q4K => decode_blocks::<BlockQ4K>(bytes, &mut out)?,
        GgmlDType::Q5K => decode_blocks::<BlockQ5K>(bytes, &mut out)?,
        GgmlDType::Q6K => decode_blocks::<BlockQ6K>(bytes, &mut out)?,
        GgmlDType::Q8K => decode_blocks::<BlockQ8K>(bytes, &mut out)?,
    }
    Ok(out)
}

/// Decodes llama.cpp blocks of type `B` in parallel, reading them in place from `bytes`.
fn decode_blocks<B: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let size = std::mem::size_of::<B>();
    let blocks = out.len() / B::BLCK_SIZE;
    if bytes.len() != blocks * size {
        bail!("{} bytes do not hold {blocks} blocks of {size} bytes", bytes.len());
    }
    let aligned = bytes.as_ptr().align_offset(std::mem::align_of::<B>()) == 0;
    let owned: Vec<B>;
    let blocks: &[B] = if aligned {
        // SAFETY: `B` is one of candle's `#[repr(C)]` block structs, made only of integers, f16 and byte
        // arrays, for which every bit pattern is valid; the pointer is aligned for `B` and the slice covers
        // exactly `blocks * size_of::<B>()` bytes of `bytes`, which outlives it.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), blocks) }
    } else {
        // GGUF aligns tensor data (32 bytes by default); a file that does not is copied once.
        owned = (0..blocks)
            .map(|i| {
                // SAFETY: as above; `read_unaligned` copies `size_of::<B>()` bytes from within `bytes`.
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * size).cast::<B>()) }
            })
            .collect();
        &owned
    };
    out.par_chunks_mut(BLOCKS_PER_TASK * B::BLCK_SIZE)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(o, b)| B::to_float(b, o));
    Ok(())
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
