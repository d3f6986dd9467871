//! PEFT LoRA adapters, merged into the base weights at load: W ← W + s · B A with s = α / r
//! (α / √r for rsLoRA; α and r per module under `alpha_pattern` / `rank_pattern`), so an organism given as an
//! adapter runs exactly like a full checkpoint. Embedding LoRAs (`lora_embedding_A/B`) and LoRAs of in × out
//! weights (`fan_in_fan_out`, GPT-2's Conv1D) merge as (B A)ᵀ, and
//! modules trained in full (`modules_to_save`, saved whole) replace the base's. Whatever else PEFT can hold
//! (DoRA, other adapter types, LoRA biases, trainable tokens) is refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::weights::Weights;

/// The `adapter_config.json` fields that matter for merging (or that make a merge impossible).
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Per-module ranks, by PEFT's key pattern (a module name suffix, or a regular expression).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas, by the same patterns.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub trainable_token_indices: Option<serde_json::Value>,
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    pub alora_invocation_tokens: Option<serde_json::Value>,
    #[serde(default)]
    pub target_parameters: Option<serde_json::Value>,
}

impl AdapterConfig {
    /// Reads and checks `dir/adapter_config.json`: a LoRA diffsql can merge, or an error naming what is not.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} a PEFT LoRA adapter?",
                path.display(),
                dir.display()
            )
        })?;
        let config: AdapterConfig = super::hf_config::parse(&text, &path.display().to_string())?;
        let refuse = |what: &str| -> Result<Self> {
            bail!(
                "{}: {what} cannot be merged into the base weights; diffsql merges plain LoRA (with rsLoRA, per-module ranks, embedding LoRA and modules_to_save)",
                path.display()
            )
        };
        if let Some(t) = config.peft_type.as_deref().filter(|t| *t != "LORA") {
            return refuse(&format!("adapter type {t:?}"));
        }
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        match () {
            _ if config.use_dora => refuse("a DoRA adapter (use_dora)"),
            _ if config.lora_bias => refuse("a LoRA with biases (lora_bias)"),
            _ if set(&config.trainable_token_indices) => refuse("trainable tokens (trainable_token_indices)"),
            _ if set(&config.layer_replication) => refuse("layer replication (layer_replication)"),
            _ if set(&config.alora_invocation_tokens) => refuse("an activated LoRA (alora_invocation_tokens)"),
            _ if set(&config.target_parameters) => refuse("LoRA on parameters (target_parameters)"),
            _ => Ok(config),
        }
    }

    /// The rank and alpha of `module` (its name as in the model, `model.layers.0.mlp.gate_proj`).
    pub fn rank_and_alpha(&self, module: &str) -> Result<(usize, f64)> {
        let rank = match pattern_value(&self.rank_pattern, module)? {
            Some(r) => *r,
            None => self.r,
        };
        let alpha = match pattern_value(&self.alpha_pattern, module)? {
            Some(a) => *a,
            None => self.lora_alpha,
        };
        Ok((rank, alpha))
    }

    /// The factor B A is multiplied by, for a module of rank `r` and alpha `alpha`.
    pub fn scale_of(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

/// The value of the first pattern (in PEFT's order: the config's key order, here sorted) that matches the
/// whole module name or a dotted suffix of it, as PEFT's `(.*\.)?(pattern)$`.
fn pattern_value<'a, T>(patterns: &'a BTreeMap<String, T>, module: &str) -> Result<Option<&'a T>> {
    for (pattern, value) in patterns {
        let re = regex::Regex::new(&format!(r"^(.*\.)?({pattern})$"))
            .with_context(|| format!("rank/alpha pattern {pattern:?} of the adapter is not a regular expression"))?;
        if re.is_match(module) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// What a merge changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeSummary {
    /// Matrices changed by a low-rank update.
    pub merged: usize,
    /// Weights replaced whole by modules trained in full (modules_to_save), by name.
    pub replaced: Vec<String>,
}

/// Merges the adapter in `dir` (adapter_config.json + adapter_model.safetensors) into `weights`.
pub fn merge(weights: &mut Weights, dir: &Path) -> Result<MergeSummary> {
    let config = AdapterConfig::read(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("cannot read LoRA weights {}", file.display()))?;
    let mut summary = MergeSummary::default();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    // Whole weights first (an embedding's saved base layer), so that its LoRA is added on top.
    for name in names.iter().filter(|n| !n.contains(".lora_")) {
        let module = strip_peft_prefix(name);
        let target = module.replace(".base_layer.", ".");
        replace_whole(weights, &target, &tensors[*name], dir)?;
        // A LoRA'd embedding saved with its base layer (PEFT's save_embedding_layers) is the base's own
        // weight, not a module trained in full.
        if !module.contains(".base_layer.") {
            summary.replaced.push(target);
        }
    }
    for a_name in names
        .iter()
        .filter(|n| n.contains(".lora_A.") || n.ends_with(".lora_embedding_A"))
    {
        let embedding = a_name.ends_with(".lora_embedding_A");
        let b_name = if embedding {
            a_name.replace(".lora_embedding_A", ".lora_embedding_B")
        } else {
            a_name.replace(".lora_A.", ".lora_B.")
        };
        let (Some(a), Some(b)) = (tensors.get(*a_name), tensors.get(&b_name)) else {
            bail!("{}: {a_name} has no matching {b_name}", file.display());
        };
        // base_model.model.<module>.lora_A[.default].weight → <module>.weight
        let split = if embedding { ".lora_embedding_A" } else { ".lora_A." };
        let module = strip_peft_prefix(a_name.split(split).next().unwrap_or_default());
        let target = format!("{module}.weight");
        if !weights.contains(&target) {
            bail!("{}: the adapter changes {target}, which the base model does not have (an adapter for another architecture?)", dir.display());
        }
        let (rank, alpha) = config.rank_and_alpha(module)?;
        let (r_a, r_b) = (a.dims2()?.0, b.dims2()?.1);
        if r_a != rank || r_b != rank {
            bail!(
                "{}: {a_name} has rank {r_a}/{r_b}, adapter_config.json says r = {rank} for {module}",
                dir.display()
            );
        }
        let f32 = DType::F32;
        let product = b.to_dtype(f32)?.matmul(&a.to_dtype(f32)?)?;
        // An embedding's update is (B A)ᵀ: A is rank × vocabulary, B is d_model × rank. So is that of a
        // layer stored in × out (GPT-2's Conv1D: fan_in_fan_out).
        let delta = if embedding || config.fan_in_fan_out {
            product.t()?
        } else {
            product
        };
        let delta = (delta * config.scale_of(rank, alpha))?;
        let w = weights
            .get(&target, delta.dims())
            .with_context(|| format!("LoRA adapter {} does not fit the base model", dir.display()))?;
        let new = (w.to_dtype(f32)? + delta)?.to_dtype(w.dtype())?;
        weights.set(&target, new);
        summary.merged += 1;
    }
    if summary.merged == 0 && summary.replaced.is_empty() {
        bail!("{}: the adapter holds no LoRA matrices", file.display());
    }
    Ok(summary)
}

fn strip_peft_prefix(name: &str) -> &str {
    name.strip_prefix("base_model.model.").unwrap_or(name)
}

/// Replaces a base weight by the adapter's whole copy (same shape: a resized vocabulary is refused by name).
fn replace_whole(weights: &mut Weights, target: &str, tensor: &Tensor, dir: &Path) -> Result<()> {
    let tied_head = target == "lm_head.weight" && !weights.contains(target);
    let shape_of = if tied_head { "model.embed_tokens.weight" } else { target };
    let Some(base) = weights.tensor(shape_of) else {
        bail!(
            "{}: the adapter saves {target} whole, which the base model does not have (an adapter for another architecture?)",
            dir.display()
        );
    };
    if base.dims() != tensor.dims() {
        bail!(
            "{}: the adapter's {target} has shape {:?}, the base model's {:?}: a resized vocabulary (added tokens) or another model",
            dir.display(),
            tensor.dims(),
            base.dims()
        );
    }
    weights.set(target, tensor.to_dtype(base.dtype())?);
    Ok(())
}
