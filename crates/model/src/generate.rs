//! Text generation: batched prompts of different lengths (left-padded), incremental decoding with a KV cache,
//! greedy or seeded sampling (temperature, top-p), each row stopping at an end-of-sequence token or after
//! `max_new_tokens`, as transformers' `generate` does.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use super::decoder::Decoder;
use super::intervention::{Intervention, KvCache};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals).
    Greedy,
    /// A token drawn from softmax(logits / temperature), restricted to the smallest set of most likely tokens
    /// whose probabilities sum to at least `top_p`; reproducible for a seed.
    Sample { temperature: f64, top_p: f64, seed: u64 },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end a row (kept as its last token).
    pub eos: Vec<u32>,
    /// Fed to rows that have ended, and used to left-pad prompts.
    pub pad: u32,
    /// Changes to the residual stream, applied to prompt and generated tokens as they pass (steering).
    pub interventions: Vec<Intervention>,
}

/// Most new tokens one call may ask for.
pub const MAX_NEW_TOKENS: usize = 4096;

impl GenerateOptions {
    /// Checks the options; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            bail!(
                "max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {}",
                self.max_new_tokens
            );
        }
        if let Sampling::Sample { temperature, top_p, .. } = self.sampling {
            if !(temperature > 0.0 && temperature.is_finite()) {
                bail!("temperature must be a positive number, got {temperature} (use greedy decoding for 0)");
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                bail!("top_p must be in (0, 1], got {top_p}");
            }
        }
        Ok(())
    }
}

/// The chosen token of one row's logits.
fn choose(logits: &[f32], sampling: Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    match sampling {
        Sampling::Greedy => {
            let mut best = 0;
            for (i, v) in logits.iter().enumerate() {
                if *v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }
        Sampling::Sample { temperature, top_p, .. } => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u32, (((*v - max) as f64) / temperature).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= total);
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0;
            let mut mass = 0.0;
            for p in &probs {
                kept += 1;
                mass += p.1;
                if mass >= top_p {
                    break;
                }
            }
            let draw: f64 = rng.random::<f64>() * mass;
            let mut acc = 0.0;
            for p in &probs[..kept] {
                acc += p.1;
                if draw < acc {
                    return p.0;
                }
            }
            probs[kept - 1].0
        }
    }
}

/// Generates from each prompt (token ids, BOS included if the model wants it); returns each row's new tokens,
/// its end-of-sequence token included when it produced one.
pub fn generate(model: &Decoder, prompts: &[Vec<u32>], options: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
    generate_each(model, prompts, options, |_, _| true)
}

/// [`generate`], telling `on_token(row, token)` of every token as it is chosen (for streaming); generation
/// stops early, keeping what it has, when `on_token` returns false (the reader went away).
pub fn generate_each(
    model: &Decoder,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Vec<u32>>> {
    options.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} has no tokens");
    }
    let device = model.device().clone();
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(options.pad, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let mut attention = Tensor::from_vec(mask, (b, longest), &device)?;
    let mut input = Tensor::from_vec(ids, (b, longest), &device)?;
    let mut cache = KvCache::new(model.num_layers());
    let seed = match options.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..options.max_new_tokens {
        let hidden = model.forward_intervened(&input, &attention, &mut cache, &options.interventions)?;
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        let logits = model
            .logits(&last)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (r, row) in logits.iter().enumerate() {
            if done[r] {
                next.push(options.pad);
                continue;
            }
            let t = choose(row, options.sampling, &mut rng);
            out[r].push(t);
            if options.eos.contains(&t) {
                done[r] = true;
            }
            next.push(t);
            if !on_token(r, t) {
                return Ok(out);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        input = Tensor::from_vec(next, (b, 1), &device)?;
        attention = Tensor::cat(&[&attention, &Tensor::ones((b, 1), DType::U32, &device)?], 1)?;
    }
    Ok(out)
}
