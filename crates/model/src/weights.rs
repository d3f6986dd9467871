//! The tensors of a checkpoint by their Hugging Face names, whatever file format they came from, with
//! errors that name the missing or misshapen tensor and where it was looked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// Named tensors of one model.
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Prefix in front of the standard names (`language_model.` in multimodal checkpoints).
    prefix: String,
    /// Where they came from, for messages.
    source: String,
}

impl Weights {
    /// Wraps tensors read from `source`.
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        // transformers 5's multimodal wrappers keep the language model at `model.language_model.`.
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(name, t)| match name.strip_prefix("model.language_model.") {
                Some(rest) => (format!("model.{rest}"), t),
                None => (name, t),
            })
            .collect();
        let prefix = ["", "language_model.", "model.language_model."]
            .into_iter()
            .find(|p| {
                tensors.contains_key(&format!("{p}model.embed_tokens.weight"))
                    || tensors.contains_key(&format!("{p}embed_tokens.weight"))
            })
            .unwrap_or("")
            .to_string();
        Self {
            tensors,
            prefix,
            source: source.into(),
        }
    }

    /// Reads `model.safetensors` or every shard listed in `model.safetensors.index.json` in `dir`.
    pub fn from_dir(dir: &Path, dtype: DType) -> Result<Self> {
        let files = safetensors_files(dir)?;
        let mut tensors = HashMap::new();
        for file in &files {
            let part = candle_core::safetensors::load(file, &Device::Cpu)
                .with_context(|| format!("cannot read weights {}: the file is missing or corrupt", file.display()))?;
            for (name, t) in part.into_iter().filter(|(name, _)| !is_vision_weight(name)) {
                tensors.insert(name, t.to_dtype(dtype)?);
            }
        }
        Ok(Self::new(tensors, dir.display().to_string()))
    }

    /// Number of values over all tensors.
    pub fn elem_count(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    /// Moves every tensor to `device` (a no-op on the CPU).
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        if device.is_cpu() {
            return Ok(());
        }
        for t in self.tensors.values_mut() {
            *t = t.to_device(device)?;
        }
        Ok(())
    }

    /// Whether a tensor exists (standard name, without the checkpoint's prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.full_name(name))
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let Some(t) = self.tensors.get(&full) else {
            bail!(
                "weight {full} is missing from {} (is this checkpoint of the architecture its config.json names?)",
                self.source
            );
        };
        if t.dims() != shape {
            bail!(
                "weight {full} in {} has shape {:?}, the config implies {:?}",
                self.source,
                t.dims(),
                shape
            );
        }
        Ok(t.clone())
    }

    /// The tensor `name` as stored, whatever its shape.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.tensors.get(&self.full_name(name)).cloned()
    }

    /// The tensor `name` if present, checked to have `shape`.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Replaces a tensor (used when merging adapters).
    pub fn set(&mut self, name: &str, t: Tensor) {
        let full = self.full_name(name);
        self.tensors.insert(full, t);
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The tensors under their names as stored (prefix included).
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Names present, without the prefix.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().filter_map(|k| k.strip_prefix(self.prefix.as_str()))
    }
}

/// Whether a tensor belongs to a multimodal model's vision side, which diffsql (text only) does not load.
fn is_vision_weight(name: &str) -> bool {
    [
        "visual.",
        "model.visual.",
        "vision_tower.",
        "model.vision_tower.",
        "multi_modal_projector.",
        "model.multi_modal_projector.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The safetensors files of a checkpoint directory.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    bail!(
        "no weights in {}: expected model.safetensors or model.safetensors.index.json",
        dir.display()
    )
}
