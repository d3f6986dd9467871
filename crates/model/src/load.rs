//! Finding and loading a model: a local checkpoint directory, or a Hugging Face repo id resolved through
//! the local hub cache (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) and downloaded only
//! when missing and not offline (`HF_HUB_OFFLINE=1`). An optional LoRA adapter is merged at load.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use diffsql_core::hub;

use super::arch::Architecture;
use super::decoder::Decoder;
use super::lora;
use super::special_tokens::SpecialTokens;
use super::weights::{safetensors_files, Weights};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with config.json, safetensors and tokenizer files.
    Dir(PathBuf),
    /// A Hugging Face repo id (`org/name`) at a revision.
    Hub { repo: String, revision: String },
    /// A GGUF file (dequantised at load); its tokenizer from a `tokenizer.json` beside it or from its metadata.
    Gguf(PathBuf),
}

impl ModelSource {
    /// An existing path is a directory source; otherwise `org/name[@revision]` is a hub repo.
    pub fn parse(s: &str) -> Result<Self> {
        let path = Path::new(s);
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let (repo, revision) = s.split_once('@').unwrap_or((s, "main"));
        if hub::is_repo_id(repo) {
            return Ok(Self::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        bail!("model {s:?} is neither an existing directory nor a Hugging Face repo id like org/name")
    }
}

/// Files that make up a checkpoint besides the weights.
const METADATA_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors.index.json",
];

/// Resolves a hub repo to a local snapshot directory, downloading missing files unless offline.
pub fn resolve_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    resolve_hub_in(&hub::hub_cache_dir(), repo, revision, hub::offline())
}

/// [`resolve_hub`] with the cache directory and offline mode given.
pub fn resolve_hub_in(cache_dir: &Path, repo: &str, revision: &str, offline: bool) -> Result<PathBuf> {
    let complete = |dir: &Path| {
        METADATA_FILES.iter().all(|f| dir.join(f).exists())
            && safetensors_files(dir).is_ok_and(|fs| fs.iter().all(|f| f.exists()))
    };
    if let Some(dir) = hub::cached_snapshot(cache_dir, repo, hf_hub::RepoType::Model, revision) {
        if complete(&dir) {
            return Ok(dir);
        }
    }
    if offline {
        bail!(
            "model {repo}@{revision} is not complete in the Hugging Face cache {} and HF_HUB_OFFLINE is set; download it where there is network, or point the model at a local directory",
            cache_dir.display()
        );
    }
    let api_repo = hub::client(
        cache_dir,
        hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision.to_string()),
    )?;
    let fetch = |f: &str| {
        api_repo.get(f).with_context(|| {
            format!("cannot download {f} of {repo}@{revision} (no network? set HF_HUB_OFFLINE=1 to use only the cache)")
        })
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    for f in OPTIONAL_FILES {
        api_repo.get(f).ok();
    }
    let dir = config.parent().expect("a file in a snapshot").to_path_buf();
    match api_repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = dir.join("model.safetensors.index.json");
            if !index.exists() {
                bail!("{repo}@{revision} has neither model.safetensors nor model.safetensors.index.json");
            }
            for shard in safetensors_files(&dir)? {
                fetch(&shard.file_name().expect("a file").to_string_lossy())?;
            }
        }
    }
    Ok(dir)
}

/// Where a model's weights are, once its files are found.
#[derive(Debug)]
enum WeightFiles {
    /// `model.safetensors` or the shards of an index, in the directory.
    Safetensors,
    Gguf(Box<super::gguf::GgufHeader>),
}

/// A model's files, opened without reading its weights: its architecture, tokenizer and special tokens.
/// Everything preprocessing can check before the expensive part (layers in range, a chat template for chat
/// data, a pair that belongs together) is known here.
#[derive(Debug)]
pub struct ModelFiles {
    pub architecture: Architecture,
    pub tokenizer: tokenizers::Tokenizer,
    /// BOS/EOS/PAD, whether BOS is added, and the chat template, each with where it came from.
    pub special: SpecialTokens,
    /// The directory the files came from.
    pub dir: PathBuf,
    weights: WeightFiles,
}

impl ModelFiles {
    /// Finds the model's files (resolving a hub id through the cache) and reads all but the weights.
    pub fn open(source: &ModelSource) -> Result<Self> {
        let (dir, architecture, weights) = match source {
            ModelSource::Gguf(file) => {
                let header = super::gguf::open(file)?;
                let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
                (dir, header.architecture.clone(), WeightFiles::Gguf(Box::new(header)))
            }
            ModelSource::Dir(_) | ModelSource::Hub { .. } => {
                let dir = match source {
                    ModelSource::Hub { repo, revision } => resolve_hub(repo, revision)?,
                    ModelSource::Dir(d) | ModelSource::Gguf(d) => d.clone(),
                };
                let config_path = dir.join("config.json");
                let text = std::fs::read_to_string(&config_path)
                    .with_context(|| format!("cannot read {}: not a model directory?", config_path.display()))?;
                let architecture = Architecture::from_config_json(&text, &config_path.display().to_string())?;
                for file in safetensors_files(&dir)? {
                    if !file.is_file() {
                        bail!(
                            "weights {} are missing: the checkpoint in {} is incomplete",
                            file.display(),
                            dir.display()
                        );
                    }
                }
                (dir, architecture, WeightFiles::Safetensors)
            }
        };
        architecture.spec()?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = match &weights {
            // A GGUF carries its vocabulary: a tokenizer.json beside it wins, else the metadata's is built.
            WeightFiles::Gguf(header) if !tokenizer_path.exists() => header.tokenizer()?,
            _ => tokenizers::Tokenizer::from_file(&tokenizer_path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tokenizer_path.display()))?,
        };
        let gguf = match &weights {
            WeightFiles::Gguf(h) => Some(&h.tokenizer),
            WeightFiles::Safetensors => None,
        };
        let special = SpecialTokens::resolve(&dir, &tokenizer, gguf);
        Ok(Self {
            architecture,
            tokenizer,
            special,
            dir,
            weights,
        })
    }

    /// Reads (for GGUF: dequantises) the weights on the CPU, as named tensors in `dtype`.
    pub fn read_weights(&self, dtype: DType) -> Result<Weights> {
        match &self.weights {
            WeightFiles::Gguf(header) => header.weights(dtype),
            WeightFiles::Safetensors => Weights::from_dir(&self.dir, dtype),
        }
    }

    /// Reads the weights (and merges `adapter`, a PEFT LoRA directory, if given) in `dtype` onto `device`.
    /// Files are read and adapters merged on the CPU; the finished weights then move to the device.
    pub fn load(self, adapter: Option<&Path>, dtype: DType, device: &Device) -> Result<LoadedModel> {
        let mut weights = self.read_weights(dtype)?;
        let mut spec = self.architecture.spec()?;
        if let Some(adapter) = adapter {
            let embed = "model.embed_tokens.weight";
            let base_embed = weights.tensor(embed);
            let summary = lora::merge(&mut weights, adapter)?;
            let saved = |name: &str| summary.replaced.iter().any(|r| r == name);
            // PEFT unties a tied head when either side is trained in full: the other keeps the base's weight.
            if spec.tied_embeddings && (saved("lm_head.weight") || saved(embed)) {
                if !saved("lm_head.weight") {
                    let head = base_embed.context("a tied model without embeddings")?;
                    weights.set("lm_head.weight", head);
                }
                spec.tied_embeddings = false;
            }
        }
        if let Architecture::Gpt2(config) = &self.architecture {
            weights = config.standardise(weights)?;
        }
        weights.move_to(device)?;
        let decoder = Decoder::load(spec, &weights)?;
        Ok(LoadedModel { files: self, decoder })
    }
}

/// A model ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    pub files: ModelFiles,
    pub decoder: Decoder,
}

/// Loads a model (and merges `adapter`, a PEFT LoRA directory, if given) in `dtype` onto `device`.
pub fn load(source: &ModelSource, adapter: Option<&Path>, dtype: DType, device: &Device) -> Result<LoadedModel> {
    ModelFiles::open(source)?.load(adapter, dtype, device)
}
