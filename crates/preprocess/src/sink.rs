//! Writing one batch of a preprocessing run: each captured layer's activations, the base model's final
//! hidden state, the tokens table (next-token statistics and KL from both models' logits) and the sequences,
//! on the writer thread; and the vocabulary table, once per model.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use datafusion::arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use diffsql_udfs::vector::ElementType;

use super::final_hidden::FinalHiddenReader;
use super::logit_diff::{top_columns, DiffExtremes, DiffTotals};
use super::next_token::{row_stats, ColumnBuilder, NextTokenArrays};
use super::plan::{Plan, Side};
use super::summary::{Stages, Summary};
use diffsql_core::cache::layout::{
    logit_diff_file_schema, logit_diff_totals_file_schema, sequences_file_schema, tokens_file_schema,
};
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::{
    ActivationBatch, ActivationWriter, CacheLayout, PartitionKey, PartitionWriter, WriteOptions,
};
use diffsql_model::data::token_text::token_text;
use diffsql_model::data::tokenize::TokenizedDataset;
use diffsql_model::pair::ModelPair;

/// Writes every token id of the tokenizer with its decoded text.
pub fn write_vocab(
    layout: &CacheLayout,
    key: &PartitionKey,
    tokenizer: &tokenizers::Tokenizer,
    vocab: usize,
    options: &WriteOptions,
) -> Result<diffsql_core::cache::Manifest> {
    let schema = diffsql_core::cache::layout::vocab_file_schema();
    let text = StringArray::from_iter_values((0..vocab as u32).map(|id| token_text(tokenizer, id)));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int32Array::from_iter_values(0..vocab as i32)), Arc::new(text)],
    )?;
    let mut w = PartitionWriter::create(layout, key.clone(), schema, options.clone())?;
    w.write(&batch)?;
    w.finish()
}

/// The environment variable that makes a run die after writing this many batches (the crash tests: an
/// interrupted run at a known point, instead of a kill timed from outside).
pub const CRASH_AFTER_BATCHES_VAR: &str = "DIFFSQL_CRASH_AFTER_BATCHES";

fn crash_after_batches() -> Option<usize> {
    std::env::var(CRASH_AFTER_BATCHES_VAR).ok()?.parse().ok()
}

/// One batch's outputs for the writer: per model, each captured layer's token rows and the final hidden.
pub struct BatchOutput {
    pub dataset: usize,
    pub first_seq: usize,
    pub sequences: usize,
    pub base: Option<(Vec<Vec<f32>>, Vec<f32>)>,
    pub organism: Option<(Vec<Vec<f32>>, Vec<f32>)>,
}

/// Owns the writers of the partitions to write; computes next-token statistics.
pub struct Sink<'a> {
    activations: Vec<(Side, usize, ActivationWriter)>,
    final_hidden: Option<ActivationWriter>,
    pub tokens: Vec<(Side, PartitionWriter)>,
    /// The organism's `logit_diff` and `logit_diff_totals` writers, and each dataset's running totals.
    logit_diff: Option<LogitDiffOutput>,
    sequences: Option<PartitionWriter>,
    pub cached_base: Option<FinalHiddenReader>,
    datasets: &'a [TokenizedDataset],
    pair: &'a ModelPair,
    top_k: usize,
    d_model: usize,
    token_text: Vec<Option<String>>,
    stages: Stages,
}

/// What a run writes of the logit difference.
struct LogitDiffOutput {
    per_token: PartitionWriter,
    totals_writer: PartitionWriter,
    totals: Vec<DiffTotals>,
    top_k: usize,
}

/// How many next-token and logit-difference candidates to keep per token.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    pub top_k: usize,
    pub diff_top_k: usize,
}

/// How a run's partitions are written: the activations' storage type, the candidates kept per token, the
/// writer options, and the fingerprint of the run's tokens (declared by partitions without token keys).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub storage: ElementType,
    pub candidates: Candidates,
    pub options: &'a WriteOptions,
    pub fingerprint: &'a str,
}

impl<'a> Sink<'a> {
    /// Opens a writer for every partition of `plan` (each waits for another run writing the same one, and
    /// fails with [`AlreadyComplete`](diffsql_core::cache::writer::AlreadyComplete) if that run finished it).
    pub fn create(
        layout: &CacheLayout,
        plan: &Plan,
        target: &Target,
        datasets: &'a [TokenizedDataset],
        pair: &'a ModelPair,
    ) -> Result<Self> {
        let Target {
            storage,
            candidates,
            options,
            fingerprint,
        } = *target;
        let d_model = pair.base.decoder.spec().hidden;
        let activation = |key: &PartitionKey, dtype| {
            ActivationWriter::create(
                layout,
                key.clone(),
                VectorEncoding::new(dtype, d_model),
                options.clone(),
            )
        };
        let activations = plan
            .activations
            .iter()
            .map(|(s, i, k)| Ok((*s, *i, activation(k, storage)?)))
            .collect::<Result<_>>()?;
        let final_hidden = plan
            .final_hidden
            .as_ref()
            .map(|k| activation(k, ElementType::Float32))
            .transpose()?;
        let tokens = plan
            .tokens
            .iter()
            .map(|(s, k)| {
                Ok((
                    *s,
                    PartitionWriter::create(layout, k.clone(), tokens_file_schema(), options.clone())?,
                ))
            })
            .collect::<Result<_>>()?;
        let sequences = plan
            .sequences
            .as_ref()
            .map(|k| PartitionWriter::create(layout, k.clone(), sequences_file_schema(), options.clone()))
            .transpose()?;
        let vocab = pair.base.decoder.spec().vocab;
        let logit_diff = match &plan.logit_diff {
            Some((per_token, totals)) => {
                let mut totals_writer =
                    PartitionWriter::create(layout, totals.clone(), logit_diff_totals_file_schema(), options.clone())?;
                totals_writer.declare_token_fingerprint(fingerprint.to_string());
                Some(LogitDiffOutput {
                    per_token: PartitionWriter::create(
                        layout,
                        per_token.clone(),
                        logit_diff_file_schema(),
                        options.clone(),
                    )?,
                    totals_writer,
                    totals: datasets.iter().map(|_| DiffTotals::new(vocab)).collect(),
                    top_k: candidates.diff_top_k,
                })
            }
            None => None,
        };
        Ok(Self {
            activations,
            final_hidden,
            tokens,
            logit_diff,
            sequences,
            cached_base: None,
            datasets,
            pair,
            top_k: candidates.top_k,
            d_model,
            token_text: vec![None; vocab],
            stages: Stages::default(),
        })
    }

    pub fn consume(mut self, rx: Receiver<BatchOutput>) -> Result<Summary> {
        let crash_after = crash_after_batches();
        for (written, msg) in rx.into_iter().enumerate() {
            self.write_batch(msg)?;
            if crash_after == Some(written + 1) {
                // As `kill -9` would stop it: no destructors, no cleanup, partitions left half written.
                std::process::abort();
            }
        }
        let clock = Instant::now();
        let mut summary = Summary::default();
        let mut count = |m: diffsql_core::cache::Manifest| {
            summary.partitions_written += 1;
            summary.rows_written += m.rows;
            summary.bytes_written += m.bytes();
        };
        for (_, _, w) in self.activations {
            count(w.finish()?);
        }
        if let Some(w) = self.final_hidden {
            count(w.finish()?);
        }
        for (_, w) in self.tokens {
            count(w.finish()?);
        }
        if let Some(mut out) = self.logit_diff {
            count(out.per_token.finish()?);
            for (d, totals) in self.datasets.iter().zip(&out.totals) {
                out.totals_writer.write(&totals.to_batch(&d.name, &d.split)?)?;
            }
            count(out.totals_writer.finish()?);
        }
        if let Some(w) = self.sequences {
            count(w.finish()?);
        }
        summary.stages = Stages {
            write: self.stages.write + clock.elapsed().as_secs_f64(),
            ..self.stages
        };
        Ok(summary)
    }

    fn write_batch(&mut self, msg: BatchOutput) -> Result<()> {
        let clock = Instant::now();
        let (logits, statistics) = (self.stages.logits, self.stages.statistics);
        self.write_batch_untimed(msg)?;
        // Everything but the logits and statistics (timed inside) is encoding and writing.
        let inside = (self.stages.logits - logits) + (self.stages.statistics - statistics);
        self.stages.write += clock.elapsed().as_secs_f64() - inside;
        Ok(())
    }

    fn write_batch_untimed(&mut self, msg: BatchOutput) -> Result<()> {
        let dataset = &self.datasets[msg.dataset];
        let seqs = &dataset.sequences[msg.first_seq..msg.first_seq + msg.sequences];
        let mut seq_id = Vec::new();
        let mut pos = Vec::new();
        let mut token_id = Vec::new();
        let mut next = Vec::new();
        for s in seqs {
            for (p, &t) in s.ids.iter().enumerate() {
                seq_id.push(s.seq_id);
                pos.push(p as i32);
                token_id.push(t as i32);
                next.push(s.ids.get(p + 1).copied());
            }
        }
        let rows = seq_id.len();
        let batch = |vectors| ActivationBatch {
            dataset: &dataset.name,
            split: &dataset.split,
            seq_id: &seq_id,
            pos: &pos,
            token_id: &token_id,
            vectors,
        };
        for (side, i, w) in &mut self.activations {
            let out = if *side == Side::Base { &msg.base } else { &msg.organism };
            let (layers, _) = out.as_ref().expect("the side with partitions to write was run");
            w.push(&batch(&layers[*i]))?;
        }
        if let Some(w) = &mut self.final_hidden {
            let (_, fin) = msg
                .base
                .as_ref()
                .expect("the base model runs when its final_hidden is written");
            w.push(&batch(fin))?;
        }
        if !self.tokens.is_empty() || self.logit_diff.is_some() {
            // The base model's final hidden state: from this batch's forward, or read back from the cache.
            let base_final: std::borrow::Cow<[f32]> = match (&msg.base, &mut self.cached_base) {
                (Some((_, f)), _) => f.as_slice().into(),
                (None, Some(reader)) => reader.next_rows(rows, self.d_model)?.into(),
                (None, None) => bail!("internal: no base final hidden state for the tokens table"),
            };
            let ft_final = msg.organism.as_ref().map(|(_, f)| f.as_slice());
            let columns = self.token_columns(&base_final, ft_final, &next, msg.dataset)?;
            let keys: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![dataset.name.as_str(); rows])),
                Arc::new(StringArray::from(vec![dataset.split.as_str(); rows])),
                Arc::new(Int64Array::from(seq_id.clone())),
                Arc::new(Int32Array::from(pos.clone())),
                Arc::new(Int32Array::from(token_id.clone())),
            ];
            let text: ArrayRef = Arc::new(StringArray::from_iter_values(
                token_id.iter().map(|&t| self.text_of(t as u32)),
            ));
            for (side, w) in &mut self.tokens {
                let c = if *side == Side::Base {
                    &columns.base
                } else {
                    columns.organism.as_ref().expect("run")
                };
                let kl: ArrayRef = match side {
                    Side::Base => Arc::new(Float32Array::new_null(rows)),
                    Side::Organism => Arc::new(Float32Array::from(columns.kl.clone())),
                };
                let mut cols = keys.clone();
                cols.extend([
                    Arc::clone(&text),
                    c.logprob.clone(),
                    c.topk_ids.clone(),
                    c.topk_logprobs.clone(),
                    kl,
                ]);
                w.write(&RecordBatch::try_new(tokens_file_schema(), cols)?)?;
            }
            if let Some(out) = &mut self.logit_diff {
                let (ids, values) = top_columns(&columns.diff);
                let mut cols = keys.clone();
                cols.extend([ids, values]);
                out.per_token
                    .write(&RecordBatch::try_new(logit_diff_file_schema(), cols)?)?;
            }
        }
        if let Some(w) = &mut self.sequences {
            let n = seqs.len();
            let batch = RecordBatch::try_new(
                sequences_file_schema(),
                vec![
                    Arc::new(StringArray::from(vec![dataset.name.as_str(); n])),
                    Arc::new(StringArray::from(vec![dataset.split.as_str(); n])),
                    Arc::new(Int64Array::from_iter_values(seqs.iter().map(|s| s.seq_id))),
                    Arc::new(StringArray::from_iter_values(seqs.iter().map(|s| s.text.as_str()))),
                    Arc::new(Int32Array::from_iter_values(seqs.iter().map(|s| s.ids.len() as i32))),
                ],
            )?;
            w.write(&batch)?;
        }
        Ok(())
    }

    fn text_of(&mut self, id: u32) -> String {
        let slot = &mut self.token_text[id as usize];
        slot.get_or_insert_with(|| token_text(&self.pair.base.files.tokenizer, id))
            .clone()
    }

    /// Next-token columns of both models and KL(ft‖base), and the logit difference's extremes (added to
    /// dataset `dataset`'s totals), from the final hidden states.
    fn token_columns(
        &mut self,
        base_final: &[f32],
        ft_final: Option<&[f32]>,
        next: &[Option<u32>],
        dataset: usize,
    ) -> Result<TokenColumns> {
        let rows = next.len();
        let mut base = ColumnBuilder::default();
        let mut organism = ft_final.map(|_| ColumnBuilder::default());
        let mut kls = Vec::with_capacity(rows);
        let mut diff: Vec<DiffExtremes> = Vec::new();
        // Logits in chunks bound the memory to CHUNK × vocab floats per model.
        const CHUNK: usize = 256;
        let d = self.d_model;
        for start in (0..rows).step_by(CHUNK) {
            let n = CHUNK.min(rows - start);
            let logits = |dec: &diffsql_model::decoder::Decoder, h: &[f32]| -> Result<Tensor> {
                let x = Tensor::from_slice(&h[start * d..(start + n) * d], (1, n, d), dec.device())?;
                Ok(dec.logits(&x.to_dtype(dec.dtype())?)?.squeeze(0)?)
            };
            let clock = Instant::now();
            let lb = logits(&self.pair.base.decoder, base_final)?;
            let lf = ft_final.map(|f| logits(&self.pair.organism.decoder, f)).transpose()?;
            // An organism with added tokens is compared over the shared vocabulary (the base's ids).
            let shared = self.pair.base.decoder.spec().vocab;
            let lf = match lf {
                Some(l) if l.dim(1)? > shared => Some(l.narrow(1, 0, shared)?.contiguous()?),
                other => other,
            };
            self.stages.logits += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let diff_request = self.logit_diff.as_mut().map(|o| (o.top_k, &mut o.totals[dataset]));
            let stats = row_stats(&lb, lf.as_ref(), &next[start..start + n], self.top_k, diff_request)?;
            self.stages.statistics += clock.elapsed().as_secs_f64();
            let first = diff.len();
            for row in stats {
                base.push(row.base);
                if let (Some((t, kl)), Some(o)) = (row.organism, organism.as_mut()) {
                    o.push(t);
                    kls.push(kl);
                }
                diff.extend(row.diff);
            }
            if let Some(out) = self.logit_diff.as_mut() {
                out.totals[dataset].count_extremes(&diff[first..]);
            }
        }
        Ok(TokenColumns {
            base: base.finish(),
            organism: organism.map(ColumnBuilder::finish),
            kl: kls,
            diff,
        })
    }
}

struct TokenColumns {
    base: NextTokenArrays,
    organism: Option<NextTokenArrays>,
    kl: Vec<f32>,
    diff: Vec<DiffExtremes>,
}
