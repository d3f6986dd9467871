//! One preprocessing run: tokenise the datasets once, run the base model and the organism over identical
//! batches, and write every cache partition that is not complete yet.
//!
//! The base model's partitions (`organism=base`) are shared by every organism: when they are complete and
//! hold the same tokens (same fingerprint) the base model is not run again; its logits for KL are recomputed
//! exactly from the cached `final_hidden`. Writing and the per-token statistics run on a second thread, so
//! they overlap the next batch's forward passes. Every partition is written atomically; an interrupted run
//! leaves only staging files, and a rerun writes what is missing (a finished run is a no-op).

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use diffsql_udfs::vector::ElementType;
use indicatif::{ProgressBar, ProgressStyle};
use parquet::basic::Compression;

use super::final_hidden::FinalHiddenReader;
use super::plan::{fingerprint, Plan, Side};
use super::sink::{write_vocab, BatchOutput, Candidates, Sink, Target};
use super::summary::{Stages, Summary};
use diffsql_core::cache::layout::BASE_ORGANISM;
use diffsql_core::cache::writer::{parquet_compression, AlreadyComplete};
use diffsql_core::cache::{CacheLayout, PartitionKey, WriteOptions};
use diffsql_core::config::settings::{resolve_layers, Preprocessing, Settings};
use diffsql_model::data::chat::ChatTemplate;
use diffsql_model::data::source::{self, Sample};
use diffsql_model::data::tokenize::{tokenize, Limits, TokenizedDataset};
use diffsql_model::load::{LoadedModel, ModelFiles};
use diffsql_model::pair::{ModelPair, PairFiles, VocabularyGap};

/// Tokenises every configured dataset with the base model's tokenizer and chat template.
pub fn tokenize_datasets(settings: &Settings, project_root: &Path, base: &ModelFiles) -> Result<Vec<TokenizedDataset>> {
    Ok(tokenize_datasets_watching(settings, project_root, base, &[])?.0)
}

/// [`tokenize_datasets`], also counting how often each of `watched` (texts, such as an organism's own tokens)
/// occurs in the samples' text, in the same read of the data.
fn tokenize_datasets_watching(
    settings: &Settings,
    project_root: &Path,
    base: &ModelFiles,
    watched: &[String],
) -> Result<(Vec<TokenizedDataset>, Vec<usize>)> {
    let pre = &settings.preprocessing;
    let special = &base.special;
    let text = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
    let template = special
        .chat_template
        .as_deref()
        .map(|t| ChatTemplate::new(t, &text(&special.bos), &text(&special.eos)))
        .transpose()?;
    let limits = Limits {
        context_len: pre.context_len,
        max_samples: pre.max_samples,
        max_tokens: pre.max_tokens,
    };
    let mut out = Vec::new();
    let mut counts = vec![0usize; watched.len()];
    for cfg in settings.datasets() {
        // Read a margin beyond max_samples: skipped conversations do not count.
        let samples = source::read(cfg, project_root, pre.max_samples.saturating_mul(2))?;
        if !watched.is_empty() {
            for sample in samples.iter().take(pre.max_samples) {
                let texts: Vec<&str> = match sample {
                    Sample::Text(t) => vec![t.as_str()],
                    Sample::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
                };
                for (count, token) in counts.iter_mut().zip(watched) {
                    *count += texts.iter().map(|t| t.matches(token.as_str()).count()).sum::<usize>();
                }
            }
        }
        let t = tokenize(
            &cfg.name,
            &cfg.split,
            &samples,
            &base.tokenizer,
            special.bos_to_add(),
            template.as_ref(),
            limits,
        )?;
        if t.sequences.is_empty() {
            bail!("dataset {} gave no sequences ({})", cfg.name, cfg.source);
        }
        out.push(t);
    }
    Ok((out, counts))
}

/// What a run over an organism with tokens of its own says: the vocabulary the comparisons used, the tokens
/// left out, and which of the organism's tokens occur in the datasets' text (`counts`, in the order of
/// `gap.own_tokens`: tokenised by the base tokenizer, they reach both models as the base's pieces).
fn describe_vocabulary_gap(gap: &VocabularyGap, counts: &[usize]) -> String {
    let found: Vec<(&str, usize)> = gap
        .own_tokens
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|((_, t), n)| (t.as_str(), *n))
        .collect();
    let occurrences = if found.is_empty() {
        "none of its own tokens occurs in the data".to_string()
    } else {
        let list: Vec<String> = found.iter().map(|(t, n)| format!("{t:?} ×{n}")).collect();
        format!(
            "its own tokens occur in the data as text, tokenised into the base's pieces: {}",
            list.join(", ")
        )
    };
    format!(
        "the organism has {} tokens, the base {}: KL, next-token statistics and logit differences are over the {} shared tokens ({} of the organism's left out); {occurrences}",
        gap.organism,
        gap.base,
        gap.base,
        gap.left_out()
    )
}

/// The most next-token candidates the tokens table keeps per token and model.
pub const MAX_TOP_K: usize = 1024;

/// What the settings ask a run to write, checked before anything is read.
struct Output {
    storage: ElementType,
    compression: Compression,
    candidates: Candidates,
}

impl Output {
    fn from_settings(pre: &Preprocessing) -> Result<Self> {
        let (storage, compression) = (pre.dtype, parquet_compression(pre.compression));
        for (key, value) in [
            ("batch_size", pre.batch_size),
            ("context_len", pre.context_len),
            ("max_samples", pre.max_samples),
            ("max_tokens", pre.max_tokens),
        ] {
            if value == 0 {
                bail!("preprocessing.{key} must be at least 1 (it is a limit; there is no \"0 = unlimited\": give a large number)");
            }
        }
        for (key, value, table) in [
            ("top_k", pre.top_k, "tokens"),
            ("diff_top_k", pre.diff_top_k, "logit_diff"),
        ] {
            if value > MAX_TOP_K {
                bail!("preprocessing.{key} is at most {MAX_TOP_K} (got {value}): the {table} table keeps that many candidates per token");
            }
        }
        Ok(Self {
            storage,
            compression,
            candidates: Candidates {
                top_k: pre.top_k,
                diff_top_k: pre.diff_top_k,
            },
        })
    }
}

/// Everything a run knows before it loads weights: the device, both checkpoints' configs and tokenizers, the
/// layers, every dataset read and tokenised, and the tokens' fingerprint.
struct Prepared {
    layout: CacheLayout,
    device: Device,
    files: PairFiles,
    num_layers: usize,
    layers: Vec<i32>,
    datasets: Vec<TokenizedDataset>,
    fingerprint: String,
    tokenize_seconds: f64,
    /// For an organism with tokens of its own, what the summary says of them.
    vocabulary: Option<String>,
}

impl Prepared {
    fn new(settings: &Settings, project_root: &Path) -> Result<Self> {
        let pre = &settings.preprocessing;
        let (model, organism) = (settings.model.name.as_str(), settings.organism.name.as_str());
        PartitionKey::activations(model, organism, 0).validate()?;
        let device = diffsql_model::device::open(pre.device)?;
        let files = PairFiles::open(settings, project_root)?;
        let num_layers = files.num_layers()?;
        let layers = resolve_layers(&pre.layers, num_layers)?;
        let gap = files.vocabulary_gap()?;
        let watched: Vec<String> = gap
            .iter()
            .flat_map(|g| g.own_tokens.iter().map(|(_, t)| t.clone()))
            .collect();
        let clock = Instant::now();
        let (datasets, counts) = tokenize_datasets_watching(settings, project_root, &files.base, &watched)?;
        let tokenize_seconds = clock.elapsed().as_secs_f64();
        let vocabulary = gap.as_ref().map(|g| describe_vocabulary_gap(g, &counts));
        Ok(Self {
            layout: CacheLayout::new(&settings.cache_dir),
            device,
            fingerprint: fingerprint(&datasets),
            files,
            num_layers,
            layers,
            datasets,
            tokenize_seconds,
            vocabulary,
        })
    }
}

/// Runs preprocessing for the configured model, organism and datasets.
///
/// Another run writing the same partitions (two runs started together, or organisms sharing the base model's)
/// is waited for; a partition it finished meanwhile is skipped, as on a rerun: the run plans again.
pub fn run(settings: &Settings, project_root: &Path) -> Result<Summary> {
    let started = Instant::now();
    let output = Output::from_settings(&settings.preprocessing)?;
    let Prepared {
        layout,
        device,
        files,
        num_layers,
        layers,
        datasets,
        fingerprint,
        tokenize_seconds,
        vocabulary,
    } = Prepared::new(settings, project_root)?;
    let tokens: usize = datasets.iter().map(TokenizedDataset::tokens).sum();
    let tokenizer = files.base.special.describe();
    let prepared_plan = |layout: &CacheLayout| {
        Plan::build(
            layout,
            &settings.model.name,
            &settings.organism.name,
            &layers,
            output.storage,
            &fingerprint,
            output.candidates.diff_top_k,
        )
    };
    let mut plan = prepared_plan(&layout)?;
    if plan.is_empty() {
        return Ok(Summary {
            tokens,
            base_reused: true,
            seconds: started.elapsed().as_secs_f64(),
            tokenizer,
            vocabulary,
            ..Summary::default()
        });
    }
    layout.ensure_writable()?;
    let clock = Instant::now();
    let pair = files.load(settings, &device)?;
    let load = clock.elapsed().as_secs_f64();
    let options = WriteOptions {
        vector_compression: output.compression,
        settings: serde_json::json!({
            "model": settings.model,
            "organism": settings.organism.name,
            "finetuned": settings.finetuned()?,
            "datasets": settings.datasets(),
            "preprocessing": settings.preprocessing,
            "layers": layers,
            "num_layers": num_layers,
        }),
        wait_for_other_writers: true,
        ..WriteOptions::default()
    };
    let job = Job {
        settings,
        layout: &layout,
        layers: &layers,
        datasets: &datasets,
        pair: &pair,
        output: &output,
        options: &options,
        fingerprint: &fingerprint,
    };
    let (result, forward) = loop {
        match job.write(&plan) {
            Err(e) if e.downcast_ref::<AlreadyComplete>().is_some() => {
                eprintln!("{} (another run wrote it meanwhile): planning again", one_cause(&e));
                plan = prepared_plan(&layout)?;
                if plan.is_empty() {
                    break (Summary::default(), ForwardTimes::default());
                }
            }
            written => break written?,
        }
    };
    // The writer thread timed its own stages; this thread's are added here.
    let stages = Stages {
        tokenize: tokenize_seconds,
        load,
        forward_base: forward.base,
        forward_organism: forward.organism,
        waiting: forward.waiting,
        ..result.stages.clone()
    };
    Ok(Summary {
        tokens,
        base_reused: !plan.runs(Side::Base),
        seconds: started.elapsed().as_secs_f64(),
        tokenizer,
        vocabulary,
        stages,
        ..result
    })
}

/// The innermost error message that is an [`AlreadyComplete`].
fn one_cause(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<AlreadyComplete>())
        .map_or_else(|| e.to_string(), ToString::to_string)
}

/// Seconds the compute thread spent in each model and waiting for the writer.
#[derive(Debug, Default)]
struct ForwardTimes {
    base: f64,
    organism: f64,
    waiting: f64,
}

/// One plan's writing, with what every attempt shares.
struct Job<'a> {
    settings: &'a Settings,
    layout: &'a CacheLayout,
    layers: &'a [i32],
    datasets: &'a [TokenizedDataset],
    pair: &'a ModelPair,
    output: &'a Output,
    options: &'a WriteOptions,
    fingerprint: &'a str,
}

impl Job<'_> {
    /// Writes every partition of `plan`: the vocabulary, then both models over every batch, the writer
    /// thread encoding and writing while the next batch runs.
    fn write(&self, plan: &Plan) -> Result<(Summary, ForwardTimes)> {
        let (pair, pre) = (self.pair, &self.settings.preprocessing);
        if let Some(key) = &plan.vocab {
            write_vocab(
                self.layout,
                key,
                &pair.base.files.tokenizer,
                pair.base.decoder.spec().vocab,
                self.options,
            )?;
        }
        let target = Target {
            storage: self.output.storage,
            candidates: self.output.candidates,
            options: self.options,
            fingerprint: self.fingerprint,
        };
        let mut sink = Sink::create(self.layout, plan, &target, self.datasets, pair)?;
        let run_base = plan.runs(Side::Base);
        let run_organism = plan.runs(Side::Organism);
        if !run_base && (sink.tokens.iter().any(|(s, _)| *s == Side::Organism) || plan.logit_diff.is_some()) {
            sink.cached_base = Some(FinalHiddenReader::open(
                self.layout,
                &PartitionKey::final_hidden(&self.settings.model.name, BASE_ORGANISM),
            )?);
        }
        let capture: Vec<usize> = self.layers.iter().map(|&l| l as usize).collect();
        let (tx, rx) = sync_channel::<BatchOutput>(2);
        let mut times = ForwardTimes::default();
        let written = std::thread::scope(|scope| -> Result<Summary> {
            let writer = scope.spawn(|| sink.consume(rx));
            let compute = (|| -> Result<()> {
                for (d, dataset) in self.datasets.iter().enumerate() {
                    let bar = progress_bar(dataset);
                    for (b, chunk) in dataset.sequences.chunks(pre.batch_size).enumerate() {
                        let (ids, mask, lens) = batch_tensors(chunk, pair.base.decoder.device())?;
                        let forward = |m: &LoadedModel| -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
                            let out = m.decoder.forward(&ids, &mask, &capture, true)?;
                            let layers = out.layers.iter().map(|t| token_rows(t, &lens)).collect::<Result<_>>()?;
                            let hidden = out
                                .final_hidden
                                .as_ref()
                                .context("the decoder returned no final hidden state")?;
                            Ok((layers, token_rows(hidden, &lens)?))
                        };
                        let clock = Instant::now();
                        let base = run_base.then(|| forward(&pair.base)).transpose()?;
                        times.base += clock.elapsed().as_secs_f64();
                        let clock = Instant::now();
                        let organism = run_organism.then(|| forward(&pair.organism)).transpose()?;
                        times.organism += clock.elapsed().as_secs_f64();
                        let rows = lens.iter().sum::<usize>();
                        let msg = BatchOutput {
                            dataset: d,
                            first_seq: b * pre.batch_size,
                            sequences: chunk.len(),
                            base,
                            organism,
                        };
                        let clock = Instant::now();
                        if tx.send(msg).is_err() {
                            break; // the writer failed; its error is returned below
                        }
                        times.waiting += clock.elapsed().as_secs_f64();
                        bar.inc(rows as u64);
                    }
                    bar.finish_and_clear();
                }
                Ok(())
            })();
            drop(tx);
            let written = writer
                .join()
                .map_err(|_| anyhow::anyhow!("the cache writer thread panicked"))?;
            compute?;
            written
        })?;
        Ok((written, times))
    }
}

fn progress_bar(dataset: &TokenizedDataset) -> ProgressBar {
    let bar = diffsql_core::progress::bar(dataset.tokens() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {human_pos}/{human_len} tokens  {per_sec}  ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(dataset.name.clone());
    bar
}

/// Right-padded input ids, the attention mask, and each sequence's length.
fn batch_tensors(
    chunk: &[diffsql_model::data::tokenize::Sequence],
    device: &Device,
) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let lens: Vec<usize> = chunk.iter().map(|s| s.ids.len()).collect();
    let width = lens.iter().copied().max().unwrap_or(0);
    let mut ids = vec![0u32; chunk.len() * width];
    let mut mask = vec![0u8; chunk.len() * width];
    for (i, s) in chunk.iter().enumerate() {
        ids[i * width..i * width + s.ids.len()].copy_from_slice(&s.ids);
        mask[i * width..i * width + s.ids.len()].fill(1);
    }
    let shape = (chunk.len(), width);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
        lens,
    ))
}

/// The rows of a (batch, seq, d) tensor that are tokens (not padding), row-major f32.
fn token_rows(t: &Tensor, lens: &[usize]) -> Result<Vec<f32>> {
    let (_, s, d) = t.dims3()?;
    let all = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(lens.iter().sum::<usize>() * d);
    for (i, &len) in lens.iter().enumerate() {
        out.extend_from_slice(&all[i * s * d..(i * s + len) * d]);
    }
    Ok(out)
}
