//! PEFT LoRA adapters, merged into the base weights at load: W ← W + s · B A with s = α / r
//! (α / √r for rsLoRA), so an organism given as an adapter runs exactly like a full checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::Deserialize;

use super::weights::Weights;

/// The `adapter_config.json` fields that matter for merging.
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
}

impl AdapterConfig {
    /// The factor B A is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// Merges the adapter in `dir` (adapter_config.json + adapter_model.safetensors) into `weights`.
/// Returns the number of matrices changed.
pub fn merge(weights: &mut Weights, dir: &Path) -> Result<usize> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {}: is {} a PEFT LoRA adapter?",
            config_path.display(),
            dir.display()
        )
    })?;
    let config: AdapterConfig = super::hf_config::parse(&text, &config_path.display().to_string())?;
    if let Some(t) = config.peft_type.as_deref().filter(|t| *t != "LORA") {
        bail!(
            "{}: adapter type {t:?} is not supported, only LORA",
            config_path.display()
        );
    }
    if config.use_dora || config.fan_in_fan_out {
        bail!(
            "{}: DoRA and fan_in_fan_out adapters are not supported",
            config_path.display()
        );
    }
    let file = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("cannot read LoRA weights {}", file.display()))?;
    let scale = config.scale();
    let mut merged = 0;
    let mut names: Vec<&String> = tensors.keys().filter(|k| k.contains(".lora_A.")).collect();
    names.sort();
    for a_name in names {
        let b_name = a_name.replace(".lora_A.", ".lora_B.");
        let (Some(a), Some(b)) = (tensors.get(a_name), tensors.get(&b_name)) else {
            bail!("{}: {a_name} has no matching lora_B", file.display());
        };
        // base_model.model.<module>.lora_A[.default].weight → <module>.weight
        let module = a_name.split(".lora_A.").next().unwrap_or_default();
        let module = module.strip_prefix("base_model.model.").unwrap_or(module);
        let target = format!("{module}.weight");
        if !weights.contains(&target) {
            bail!("{}: the adapter changes {target}, which the base model does not have (an adapter for another architecture?)", dir.display());
        }
        let (r_a, input) = a.dims2()?;
        let (output, r_b) = b.dims2()?;
        if r_a != config.r || r_b != config.r {
            bail!(
                "{}: {a_name} has rank {r_a}/{r_b}, adapter_config.json says r = {}",
                dir.display(),
                config.r
            );
        }
        let dtype = DType::F32;
        let w = weights
            .get(&target, &[output, input])
            .with_context(|| format!("LoRA adapter {} does not fit the base model", dir.display()))?;
        let delta = (b.to_dtype(dtype)?.matmul(&a.to_dtype(dtype)?)? * scale)?;
        let new = (w.to_dtype(dtype)? + delta)?.to_dtype(w.dtype())?;
        weights.set(&target, new);
        merged += 1;
    }
    if merged == 0 {
        bail!("{}: the adapter holds no LoRA matrices", file.display());
    }
    Ok(merged)
}
