//! `diffsql generate`: the base model and the organism answer the same prompts side by side (plain text, or
//! chat turns rendered with the model's template), with greedy or seeded sampling.

use std::path::Path;

use anyhow::{Context, Result};

use crate::data::chat::ChatTemplate;
use crate::data::source::Message;
use crate::generate::{generate, GenerateOptions, Sampling};
use crate::pair::PairFiles;
use crate::{LoadedModel, ModelFiles};
use diffsql_core::config::Settings;

/// One prompt and both models' continuations.
#[derive(Debug, Clone)]
pub struct SideBySide {
    pub prompt: String,
    pub base: String,
    pub organism: String,
}

/// How long one model took to continue every prompt.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationTiming {
    /// Tokens generated over all prompts (up to and with each row's end-of-sequence token).
    pub new_tokens: usize,
    pub seconds: f64,
}

impl GenerationTiming {
    pub fn tokens_per_second(&self) -> f64 {
        self.new_tokens as f64 / self.seconds.max(1e-9)
    }
}

/// The token ids a model reads for `prompt`: the text itself or, with `chat`, a user turn rendered with the
/// model's chat template and its generation prompt; BOS first when the model adds one.
pub fn prompt_ids(files: &ModelFiles, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        let turn = Message {
            role: "user".into(),
            content: prompt.into(),
        };
        return conversation_ids(files, std::slice::from_ref(&turn)).map_err(|e| {
            if files.special.chat_template.is_none() {
                e.context("leave out --chat")
            } else {
                e
            }
        });
    }
    text_ids(files, prompt)
}

/// The token ids of a conversation the model is to continue (system, user and assistant turns), rendered with
/// the model's chat template and its generation prompt; BOS first when the model adds one.
pub fn conversation_ids(files: &ModelFiles, messages: &[Message]) -> Result<Vec<u32>> {
    let source = files
        .special
        .chat_template
        .as_deref()
        .with_context(|| format!("the model in {} has no chat template", files.dir.display()))?;
    let name = |t: &crate::special_tokens::SpecialToken| t.as_ref().map(|t| t.0.clone()).unwrap_or_default();
    let template = ChatTemplate::new(source, &name(&files.special.bos), &name(&files.special.eos))?;
    text_ids(files, &template.render_prompt(messages)?)
}

/// The token ids of a text (BOS first when the model adds one and the text does not start with it).
fn text_ids(files: &ModelFiles, text: &str) -> Result<Vec<u32>> {
    let encoding = files
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenise the prompt: {e}"))?;
    let mut ids = encoding.get_ids().to_vec();
    if let Some(bos) = files.special.bos_to_add() {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// Options for `model`: its end-of-sequence tokens stop a row; its PAD (or EOS) pads.
pub fn options_for(
    model: &LoadedModel,
    max_new_tokens: usize,
    sampling: Sampling,
    interventions: Vec<crate::Intervention>,
) -> GenerateOptions {
    let special = &model.files.special;
    GenerateOptions {
        max_new_tokens,
        sampling,
        eos: special.eos.iter().map(|t| t.1).collect(),
        pad: special.pad.as_ref().or(special.eos.as_ref()).map_or(0, |t| t.1),
        interventions,
    }
}

/// The text of generated tokens, end-of-sequence tokens and special tokens left out.
pub fn decode(model: &LoadedModel, tokens: &[u32], options: &GenerateOptions) -> Result<String> {
    let kept: Vec<u32> = tokens.iter().copied().filter(|t| !options.eos.contains(t)).collect();
    model
        .files
        .tokenizer
        .decode(&kept, true)
        .map_err(|e| anyhow::anyhow!("cannot decode the generated tokens: {e}"))
}

fn continue_all(
    model: &LoadedModel,
    prompts: &[String],
    chat: bool,
    max_new_tokens: usize,
    sampling: Sampling,
) -> Result<(Vec<String>, GenerationTiming)> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| prompt_ids(&model.files, p, chat))
        .collect::<Result<_>>()?;
    let options = options_for(model, max_new_tokens, sampling, Vec::new());
    let clock = std::time::Instant::now();
    let out = generate(&model.decoder, &ids, &options)?;
    let timing = GenerationTiming {
        new_tokens: out.iter().map(Vec::len).sum(),
        seconds: clock.elapsed().as_secs_f64(),
    };
    let texts = out
        .iter()
        .map(|tokens| decode(model, tokens, &options))
        .collect::<Result<_>>()?;
    Ok((texts, timing))
}

/// Loads the configured base model and organism and continues every prompt with both.
pub fn side_by_side(
    settings: &Settings,
    project_root: &Path,
    prompts: &[String],
    chat: bool,
    max_new_tokens: usize,
    sampling: Sampling,
) -> Result<(Vec<SideBySide>, [GenerationTiming; 2])> {
    GenerateOptions {
        max_new_tokens,
        sampling,
        eos: Vec::new(),
        pad: 0,
        interventions: Vec::new(),
    }
    .validate()?;
    if prompts.is_empty() {
        anyhow::bail!("no prompt: give one or more --prompt TEXT");
    }
    let device = crate::device::open(settings.preprocessing.device)?;
    let pair = PairFiles::open(settings, project_root)?.load(settings, &device)?;
    let (base, base_timing) = continue_all(&pair.base, prompts, chat, max_new_tokens, sampling)?;
    let (organism, organism_timing) = continue_all(&pair.organism, prompts, chat, max_new_tokens, sampling)?;
    let rows = prompts
        .iter()
        .zip(base)
        .zip(organism)
        .map(|((p, b), o)| SideBySide {
            prompt: p.clone(),
            base: b,
            organism: o,
        })
        .collect();
    Ok((rows, [base_timing, organism_timing]))
}
