//! Finding and loading a model: a local checkpoint directory, or a Hugging Face repo id resolved through
//! the local hub cache (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) and downloaded only
//! when missing and not offline (`HF_HUB_OFFLINE=1`). An optional LoRA adapter is merged at load.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::arch::Architecture;
use super::decoder::Decoder;
use super::lora;
use super::weights::{safetensors_files, Weights};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with config.json, safetensors and tokenizer files.
    Dir(PathBuf),
    /// A Hugging Face repo id (`org/name`) at a revision.
    Hub { repo: String, revision: String },
    /// A GGUF file (dequantised at load), with `tokenizer.json` beside it.
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
        if crate::hub::is_repo_id(repo) {
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

/// The hub cache directory this process uses.
pub fn hub_cache_dir() -> PathBuf {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    hf_hub::Cache::from_env().path().clone()
}

/// Resolves a hub repo to a local snapshot directory, downloading missing files unless offline.
pub fn resolve_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    resolve_hub_in(&hub_cache_dir(), repo, revision, crate::hub::offline())
}

/// [`resolve_hub`] with the cache directory and offline mode given.
pub fn resolve_hub_in(cache_dir: &Path, repo: &str, revision: &str, offline: bool) -> Result<PathBuf> {
    let cache = hf_hub::Cache::new(cache_dir.to_path_buf());
    let cached = cache.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let complete = |dir: &Path| {
        METADATA_FILES.iter().all(|f| dir.join(f).exists())
            && safetensors_files(dir).is_ok_and(|fs| fs.iter().all(|f| f.exists()))
    };
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().expect("a file in a snapshot").to_path_buf();
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
    let api_repo = crate::hub::client(
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

/// A model ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    pub architecture: Architecture,
    pub decoder: Decoder,
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template from tokenizer_config.json, if any.
    pub chat_template: Option<String>,
    /// The directory the files came from.
    pub dir: PathBuf,
    /// Beginning- and end-of-sequence tokens (text and id), from tokenizer_config.json or config.json.
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
}

/// A special token named in tokenizer_config.json (`"<bos>"` or `{"content": "<bos>"}`), else by id in
/// config.json (`bos_token_id`), as text and id.
fn special_token(dir: &Path, tokenizer: &tokenizers::Tokenizer, which: &str) -> Option<(String, u32)> {
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()
    };
    let from_tokenizer_config = read("tokenizer_config.json").and_then(|v| {
        let t = v.get(format!("{which}_token"))?;
        t.as_str()
            .or_else(|| t.get("content").and_then(|c| c.as_str()))
            .map(str::to_string)
    });
    if let Some(text) = from_tokenizer_config {
        return tokenizer.token_to_id(&text).map(|id| (text, id));
    }
    let id = read("config.json")?.get(format!("{which}_token_id"))?.as_u64()? as u32;
    tokenizer.id_to_token(id).map(|t| (t, id))
}

/// Loads a model (and merges `adapter`, a PEFT LoRA directory, if given) in `dtype` onto `device`. Files are
/// read and adapters merged on the CPU; the finished weights then move to the device.
pub fn load(source: &ModelSource, adapter: Option<&Path>, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let (dir, architecture, mut weights, gguf_template) = match source {
        ModelSource::Gguf(file) => {
            let g = super::gguf::read(file, dtype)?;
            let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, g.architecture, g.weights, g.chat_template)
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
            let weights = Weights::from_dir(&dir, dtype)?;
            (dir, architecture, weights, None)
        }
    };
    let spec = architecture.spec()?;
    if let Some(adapter) = adapter {
        lora::merge(&mut weights, adapter)?;
    }
    weights.move_to(device)?;
    let decoder = Decoder::load(spec, &weights)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", tokenizer_path.display()))?;
    // transformers 5 saves the template as chat_template.jinja; 4.x inside tokenizer_config.json.
    let chat_template = std::fs::read_to_string(dir.join("chat_template.jinja"))
        .ok()
        .or_else(|| {
            std::fs::read_to_string(dir.join("tokenizer_config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("chat_template").and_then(|c| c.as_str()).map(String::from))
        })
        .or(gguf_template);
    let bos = special_token(&dir, &tokenizer, "bos");
    let eos = special_token(&dir, &tokenizer, "eos");
    Ok(LoadedModel {
        architecture,
        decoder,
        tokenizer,
        chat_template,
        dir,
        bos,
        eos,
    })
}
