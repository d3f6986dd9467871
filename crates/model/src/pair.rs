//! Loading the two models a preprocessing run compares: the configured base model and the organism's
//! checkpoint for it (a full model or a LoRA adapter merged into the base), checked to be a finetune of it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::load::{LoadedModel, ModelFiles, ModelSource};
use diffsql_core::config::settings::{locate, ElementType, ModelConfig, Settings};

/// The candle dtype of a model config's compute dtype.
pub fn compute_dtype(dtype: ElementType) -> DType {
    match dtype {
        ElementType::Float32 => DType::F32,
        ElementType::BFloat16 => DType::BF16,
        ElementType::Float16 => DType::F16,
    }
}

/// An organism whose vocabulary is larger than its base's (tokens added in finetuning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabularyGap {
    /// Tokens of the base model: the shared vocabulary, ids 0..base.
    pub base: usize,
    /// Tokens of the organism.
    pub organism: usize,
    /// The organism's own tokens its tokenizer names (id, text), ids ≥ base.
    pub own_tokens: Vec<(u32, String)>,
}

impl VocabularyGap {
    /// Organism tokens left out of every comparison.
    pub fn left_out(&self) -> usize {
        self.organism - self.base
    }
}

/// The base model and the organism, loaded.
pub struct ModelPair {
    pub base: LoadedModel,
    pub organism: LoadedModel,
}

/// The files of the base model and of the organism's checkpoint, found and checked to belong together,
/// with no weights read yet.
pub struct PairFiles {
    pub base: ModelFiles,
    pub organism: ModelFiles,
    /// The organism's LoRA adapter directory, when it is an adapter over the base weights.
    adapter: Option<PathBuf>,
}

impl PairFiles {
    /// Finds the configured base model and the organism's checkpoint for it, reading configs and tokenizers.
    pub fn open(settings: &Settings, project_root: &Path) -> Result<Self> {
        let model = &settings.model;
        // A pair the organism does not have is known before any file is read.
        let ft = settings.finetuned()?;
        let base_source = model_source(model, project_root)?;
        let base = ModelFiles::open(&base_source).with_context(|| format!("model {}", model.name))?;
        let what = format!("organism {} for model {}", settings.organism.name, model.name);
        let (organism, adapter) = match (&ft.source, &ft.adapter) {
            (Some(src), None) => (
                ModelFiles::open(&source_of(&locate(src, project_root), &ft.revision)?),
                None,
            ),
            (None, Some(adapter)) => {
                let dir = diffsql_core::hub::resolve_adapter(&locate(adapter, project_root), &ft.revision)
                    .with_context(|| what.clone())?;
                let config = crate::lora::AdapterConfig::read(&dir).with_context(|| what.clone())?;
                if let Some(warning) = other_base(&config, &model.source) {
                    eprintln!("warning: {what}: {warning}");
                }
                (ModelFiles::open(&base_source), Some(dir))
            }
            _ => bail!(
                "{what}: [finetuned.{}] in configs/organism/{}.toml needs exactly one of source (a full model) or adapter (a PEFT LoRA)",
                model.name,
                settings.organism.name
            ),
        };
        let organism = organism.with_context(|| what.clone())?;
        let (b, o) = (base.architecture.spec()?, organism.architecture.spec()?);
        // An organism may add tokens to the base's vocabulary (resized embeddings); it may not remove any.
        if (b.hidden, b.layers.len()) != (o.hidden, o.layers.len()) || o.vocab < b.vocab {
            bail!(
                "{what}: the finetuned model is not a finetune of the base (vocab, d_model, layers {:?} vs {:?})",
                (b.vocab, b.hidden, b.layers.len()),
                (o.vocab, o.hidden, o.layers.len())
            );
        }
        Ok(Self {
            base,
            organism,
            adapter,
        })
    }

    /// The organism's vocabulary beyond the base's, when it added tokens: statistics that compare the two
    /// models' next-token distributions use the shared vocabulary (the base's ids).
    pub fn vocabulary_gap(&self) -> Result<Option<VocabularyGap>> {
        let (base, organism) = (
            self.base.architecture.spec()?.vocab,
            self.organism.architecture.spec()?.vocab,
        );
        if organism == base {
            return Ok(None);
        }
        let mut own_tokens: Vec<(u32, String)> = self
            .organism
            .tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(id, _)| *id as usize >= base)
            .map(|(id, t)| (id, t.content))
            .collect();
        own_tokens.sort();
        Ok(Some(VocabularyGap {
            base,
            organism,
            own_tokens,
        }))
    }

    /// The decoder layers of the base model.
    pub fn num_layers(&self) -> Result<usize> {
        Ok(self.base.architecture.spec()?.layers.len())
    }

    /// Reads both models' weights in the configured dtype onto `device`.
    pub fn load(self, settings: &Settings, device: &Device) -> Result<ModelPair> {
        let dtype = compute_dtype(settings.model.dtype);
        let what = format!("organism {} for model {}", settings.organism.name, settings.model.name);
        let base = self
            .base
            .load(None, dtype, device)
            .with_context(|| format!("model {}", settings.model.name))?;
        let organism = self
            .organism
            .load(self.adapter.as_deref(), dtype, device)
            .with_context(|| what)?;
        Ok(ModelPair { base, organism })
    }
}

impl PairFiles {
    /// Reads only the organism's weights (an adapter is merged into the base weights).
    pub fn load_organism(self, settings: &Settings, device: &Device) -> Result<LoadedModel> {
        let dtype = compute_dtype(settings.model.dtype);
        let what = format!("organism {} for model {}", settings.organism.name, settings.model.name);
        self.organism
            .load(self.adapter.as_deref(), dtype, device)
            .with_context(|| what)
    }
}

/// When an adapter names the hub id of another base model than the config's (`base_model_name_or_path`), what
/// to tell the user; `None` when they agree or either is a local path (nothing to compare).
pub fn other_base(adapter: &crate::lora::AdapterConfig, base_source: &str) -> Option<String> {
    let trained_on = adapter.base_model_name_or_path.as_deref()?.trim_end_matches('/');
    let base = base_source
        .split('@')
        .next()
        .unwrap_or(base_source)
        .trim_end_matches('/');
    let is_hub = |s: &str| diffsql_core::hub::is_repo_id(s) && !Path::new(s).exists();
    if !is_hub(trained_on) || !is_hub(base) || trained_on.eq_ignore_ascii_case(base) {
        return None;
    }
    Some(format!(
        "the adapter was trained on {trained_on} (its base_model_name_or_path), the config's base model is {base}: the LoRA is merged into {base}"
    ))
}

/// Loads the configured base model and the organism's checkpoint for it.
pub fn load_pair(settings: &Settings, project_root: &Path) -> Result<ModelPair> {
    let device = crate::device::open(settings.preprocessing.device)?;
    PairFiles::open(settings, project_root)?.load(settings, &device)
}

/// Where a model config's weights come from (a path relative to the project, or a hub id at its revision).
pub fn model_source(model: &ModelConfig, project_root: &Path) -> Result<ModelSource> {
    source_of(&locate(&model.source, project_root), &model.revision)
}

fn source_of(s: &str, revision: &str) -> Result<ModelSource> {
    Ok(match ModelSource::parse(s)? {
        ModelSource::Hub { repo, revision: r } if r == "main" => ModelSource::Hub {
            repo,
            revision: revision.to_string(),
        },
        other => other,
    })
}
