//! Loading the two models a preprocessing run compares: the configured base model and the organism's
//! checkpoint for it (a full model or a LoRA adapter merged into the base), checked to be a finetune of it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::DType;

use crate::config::settings::{locate, ModelConfig, Settings};
use crate::model::load::{load, LoadedModel, ModelSource};

/// The compute dtype named in a model config.
pub fn compute_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "float32" | "f32" => DType::F32,
        "bfloat16" | "bf16" => DType::BF16,
        "float16" | "f16" => DType::F16,
        other => bail!("model dtype {other:?} is not one of float32, bfloat16, float16"),
    })
}

/// The base model and the organism, loaded.
pub struct ModelPair {
    pub base: LoadedModel,
    pub organism: LoadedModel,
}

/// Loads the configured base model and the organism's checkpoint for it.
pub fn load_pair(settings: &Settings, project_root: &Path) -> Result<ModelPair> {
    let dtype = compute_dtype(&settings.model.dtype)?;
    let device = settings.preprocessing.device.open()?;
    let model = &settings.model;
    let base_source = model_source(model, project_root)?;
    let base = load(&base_source, None, dtype, &device).with_context(|| format!("model {}", model.name))?;
    let ft = settings.finetuned()?;
    let what = format!("organism {} for model {}", settings.organism.name, model.name);
    let organism = match (&ft.source, &ft.adapter) {
        (Some(src), None) => load(&source_of(&locate(src, project_root), &ft.revision)?, None, dtype, &device),
        (None, Some(adapter)) => {
            let dir = crate::hub::resolve_adapter(&locate(adapter, project_root), &ft.revision)?;
            load(&base_source, Some(&dir), dtype, &device)
        }
        _ => bail!(
            "{what}: [finetuned.{}] in configs/organism/{}.toml needs exactly one of source (a full model) or adapter (a PEFT LoRA)",
            model.name,
            settings.organism.name
        ),
    }
    .with_context(|| what.clone())?;
    let (b, o) = (base.decoder.spec(), organism.decoder.spec());
    if (b.vocab, b.hidden, base.decoder.num_layers()) != (o.vocab, o.hidden, organism.decoder.num_layers()) {
        bail!(
            "{what}: the finetuned model is not a finetune of the base (vocab, d_model, layers {:?} vs {:?})",
            (b.vocab, b.hidden, base.decoder.num_layers()),
            (o.vocab, o.hidden, organism.decoder.num_layers())
        );
    }
    Ok(ModelPair { base, organism })
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
