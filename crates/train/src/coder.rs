//! Training one sparse coder (a crosscoder on (base, ft) pairs or an SAE on ft − base): fit the
//! normalisation, then run the step schedule over shuffled epochs with one of two step back-ends, track dead
//! latents, draw the held-out curve, checkpoint, and write the dictionary with its statistics.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use diffsql_kernels::dense::scale_sides;
use indicatif::ProgressBar;

use super::checkpoint::{load_checkpoint, save_checkpoint, CheckpointState};
use super::data::{RowKind, Shuffle, Split, TrainingSource};
use super::host::HostTrainer;
use super::request::{progress_bar, too_few, ManifestBase, Outcome, TrainRequest};
use super::schedule::Schedule;
use super::sparse_coder::{host_values, Adam, CoderSpec, SparseCoder, Sparsity, StepSettings, StepStats};
use super::statistics::{latent_table, validation_fve};
use super::store::{self, CurvePoint};
use diffsql_core::cache::layout::CacheLayout;
use diffsql_core::config::{DictionaryKind, SparsityKind, TrainConfig};

/// Rows of validation data the curve's periodic evaluations use.
const CURVE_VALIDATION_ROWS: usize = 1024;
/// Training rows the normalisation is fitted on (the first ones in file order).
const NORMALISATION_ROWS: usize = 65_536;

/// Trains the sparse coder `base` describes (resuming from its checkpoint) and writes it.
pub(crate) fn train(
    layout: &CacheLayout,
    source: &TrainingSource,
    base: ManifestBase,
    request: &TrainRequest,
) -> Result<Outcome> {
    let config = &base.config;
    let (spec, kind) = coder_spec(&base, source)?;
    let device = &request.device;
    let mut coder = SparseCoder::new(spec, config.seed, device)?;
    let mut adam = Adam::new(&coder.vars())?;
    let dir = store::checkpoint_dir(layout, &base.id);
    let resumed = load_checkpoint(&dir, &mut coder, &mut adam, config, &base.source_fingerprint)?;
    let scale = match &resumed {
        Some(s) => s.scale.clone(),
        None => fit_scale(source, kind, spec.sides)?,
    };
    let schedule = Schedule::new(config, source.train_rows, spec.d_model);
    let mut state = resumed.unwrap_or_else(|| CheckpointState {
        settings: config.clone(),
        source_fingerprint: base.source_fingerprint.clone(),
        step: 0,
        epoch: 0,
        batches_in_epoch: 0,
        tokens: 0,
        threshold: -1.0,
        adam_t: 0,
        tokens_since_fired: vec![0; spec.latents],
        curve: Vec::new(),
        scale: scale.clone(),
        seconds: 0.0,
    });
    if state.step > 0 {
        eprintln!(
            "train {}: resuming at step {} of {}",
            base.id, state.step, schedule.total_steps
        );
    }
    let mut run = Run {
        base: &base,
        request,
        schedule,
        spec,
        scale: &scale,
        curve_sample: held_out_sample(source, kind, &scale, spec.d_model)?,
        checkpoint_dir: &dir,
        backend: Backend::for_coder(&coder, &adam)?,
        progress: Progress::new(request, schedule.total_steps, state.step),
        started: Instant::now(),
        stages: TrainStages::default(),
        tokens_at_start: state.tokens,
        seconds_before: state.seconds,
    };
    while state.epoch < config.epochs as u64 {
        if let Some(step) = run.epoch(source, kind, &mut coder, &mut adam, &mut state)? {
            run.progress.bar.abandon();
            return Ok(Outcome::Stopped { step });
        }
        state.epoch += 1;
        state.batches_in_epoch = 0;
    }
    run.progress.bar.finish_and_clear();
    run.backend.store(&coder, &mut adam)?;
    run.finish(layout, source, kind, &coder, state)
}

/// The coder's shape and the rows it trains on, checked against the data and the settings.
fn coder_spec(base: &ManifestBase, source: &TrainingSource) -> Result<(CoderSpec, RowKind)> {
    let config = &base.config;
    let d = source.d_model();
    let (sides, kind, sae) = match config.kind {
        DictionaryKind::Crosscoder => (2, RowKind::Pair, false),
        _ => (1, RowKind::Difference, true),
    };
    if source.train_rows < config.batch_size {
        return Err(too_few(
            base,
            source.train_rows,
            config.batch_size,
            "one batch (train.batch_size)",
        ));
    }
    let spec = CoderSpec {
        sides,
        d_model: d,
        latents: config.expansion * d,
        sparsity: match config.sparsity {
            SparsityKind::BatchTopk => Sparsity::BatchTopK,
            SparsityKind::L1 => Sparsity::L1,
        },
        sae,
    };
    if spec.sparsity == Sparsity::BatchTopK && config.k > spec.latents {
        bail!(
            "diffing.method.train.k ({}) is above the number of latents ({} = expansion {} × d_model {d})",
            config.k,
            spec.latents,
            config.expansion
        );
    }
    Ok((spec, kind))
}

/// A small held-out sample for the curve, normalised as training rows are.
fn held_out_sample(source: &TrainingSource, kind: RowKind, scale: &[f32], d: usize) -> Result<Vec<f32>> {
    let mut sample = source
        .stream(Split::Validation, kind, None)
        .next_batch(CURVE_VALIDATION_ROWS)?;
    scale_sides(&mut sample, d, scale);
    Ok(sample)
}

/// Per-side scales that make the mean squared norm of each side d_model, from the first training rows.
fn fit_scale(source: &TrainingSource, kind: RowKind, sides: usize) -> Result<Vec<f32>> {
    let d = source.d_model();
    let mut stream = source.stream(Split::Train, kind, None);
    let rows = stream.next_batch(NORMALISATION_ROWS)?;
    let n = rows.len() / (sides * d);
    let mut sq = vec![0f64; sides];
    for row in rows.chunks_exact(sides * d) {
        for (s, side) in row.chunks_exact(d).enumerate() {
            sq[s] += side.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
        }
    }
    Ok(sq
        .iter()
        .map(|total| {
            let mean = total / n.max(1) as f64;
            if mean > 0.0 {
                (d as f64 / mean).sqrt() as f32
            } else {
                1.0
            }
        })
        .collect())
}

/// How a step is computed: BatchTopK on the CPU trains sparsely on host buffers (`diffsql-kernels`),
/// everything else (L1, a GPU) through candle's autograd.
enum Backend {
    Host(Box<HostTrainer>),
    Autograd,
}

impl Backend {
    fn for_coder(coder: &SparseCoder, adam: &Adam) -> Result<Self> {
        Ok(if HostTrainer::applies(coder) {
            Self::Host(Box::new(HostTrainer::new(coder, adam)?))
        } else {
            Self::Autograd
        })
    }

    fn step(
        &mut self,
        coder: &mut SparseCoder,
        adam: &mut Adam,
        rows: Vec<f32>,
        settings: &StepSettings,
        lr: f64,
        device: &Device,
    ) -> Result<StepStats> {
        match self {
            Self::Host(h) => h.step(coder, adam, &rows, settings, lr),
            Self::Autograd => {
                let width = coder.spec.width();
                let n = rows.len() / width;
                let x = Tensor::from_vec(rows, (n, width), device)?;
                let (loss, stats) = coder.loss(&x, settings)?;
                let mut grads = loss.backward()?;
                coder.project_decoder_gradient(&mut grads)?;
                adam.step(&coder.vars(), &grads, lr)?;
                coder.normalise_decoder()?;
                Ok(stats)
            }
        }
    }

    /// Copies the host trainer's weights and moments into the candle model (for checkpoints, curves and
    /// the written dictionary); the autograd back-end trains the candle model itself.
    fn store(&self, coder: &SparseCoder, adam: &mut Adam) -> Result<()> {
        match self {
            Self::Host(h) => h.store(coder, adam),
            Self::Autograd => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Host(_) => "sparse CPU steps",
            Self::Autograd => "steps",
        }
    }
}

/// Seconds a training run spent per stage (this process).
#[derive(Debug, Default)]
struct TrainStages {
    read: f64,
    step: f64,
    evaluate: f64,
}

/// The bar on a terminal; off one (a log, CI) a line every tenth of the run instead.
struct Progress {
    bar: ProgressBar,
    log_lines: bool,
    log_every: u64,
    shown: bool,
}

impl Progress {
    fn new(request: &TrainRequest, total_steps: u64, step: u64) -> Self {
        let bar = progress_bar(total_steps, "steps");
        if !request.progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(step);
        Self {
            bar,
            log_lines: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            log_every: (total_steps / 10).max(1),
            shown: request.progress,
        }
    }
}

/// One training run: what every step of every epoch shares.
struct Run<'a> {
    base: &'a ManifestBase,
    request: &'a TrainRequest,
    schedule: Schedule,
    spec: CoderSpec,
    scale: &'a [f32],
    curve_sample: Vec<f32>,
    checkpoint_dir: &'a std::path::Path,
    backend: Backend,
    progress: Progress,
    started: Instant,
    stages: TrainStages,
    tokens_at_start: u64,
    seconds_before: f64,
}

impl Run<'_> {
    fn config(&self) -> &TrainConfig {
        &self.base.config
    }

    /// The rest of epoch `state.epoch`; `Some(step)` when the request's stop point was reached.
    fn epoch(
        &mut self,
        source: &TrainingSource,
        kind: RowKind,
        coder: &mut SparseCoder,
        adam: &mut Adam,
        state: &mut CheckpointState,
    ) -> Result<Option<u64>> {
        let base = self.base;
        let config = &base.config;
        let mut stream = source.stream(
            Split::Train,
            kind,
            Some(Shuffle {
                seed: config.seed,
                epoch: state.epoch,
                buffer_rows: config.shuffle_buffer_rows,
            }),
        );
        for _ in 0..state.batches_in_epoch {
            stream.next_batch(config.batch_size)?;
        }
        loop {
            let read_started = Instant::now();
            let mut rows = stream.next_batch(config.batch_size)?;
            self.stages.read += read_started.elapsed().as_secs_f64();
            if rows.is_empty() {
                return Ok(None);
            }
            scale_sides(&mut rows, self.spec.d_model, self.scale);
            if let Some(step) = self.step(coder, adam, state, rows)? {
                return Ok(Some(step));
            }
        }
    }

    /// One step on `rows`, then the bookkeeping: threshold, dead latents, curve, progress, checkpoint.
    fn step(
        &mut self,
        coder: &mut SparseCoder,
        adam: &mut Adam,
        state: &mut CheckpointState,
        rows: Vec<f32>,
    ) -> Result<Option<u64>> {
        let base = self.base;
        let config = &base.config;
        let n = rows.len() / self.spec.width();
        let settings = StepSettings {
            k: self.schedule.k(state.step),
            k_aux: self.schedule.k_aux,
            dead: dead_latents(state, config.dead_tokens),
            auxk_alpha: config.auxk_alpha as f32,
            l1: self.schedule.l1(state.step) as f32,
        };
        let step_started = Instant::now();
        let lr = self.schedule.lr(state.step);
        let stats = self
            .backend
            .step(coder, adam, rows, &settings, lr, &self.request.device)?;
        self.stages.step += step_started.elapsed().as_secs_f64();
        if !stats.loss.is_finite() {
            bail!(
                "dictionary {}: the loss became {} at step {}: lower diffing.method.train.lr",
                self.base.id,
                stats.loss,
                state.step
            );
        }
        if state.step >= config.warmup_steps as u64 {
            coder.update_threshold(stats.min_selected, config.threshold_beta as f32);
        }
        for (t, fired) in state.tokens_since_fired.iter_mut().zip(&stats.fired) {
            *t = if *fired { 0 } else { *t + n as u64 };
        }
        state.step += 1;
        state.tokens += n as u64;
        state.batches_in_epoch += 1;
        let dead_now = dead_latents(state, config.dead_tokens).iter().filter(|d| **d).count();
        let stop = self.request.stop_after_steps.is_some_and(|s| state.step >= s);
        let checkpoint = state.step.is_multiple_of(config.checkpoint_every as u64) || stop;
        let curve_point = self.schedule.is_curve_point(state.step);
        let evaluate_started = Instant::now();
        if checkpoint || curve_point {
            self.backend.store(coder, adam)?;
        }
        if curve_point {
            let validation_fve = validation_fve(coder, &self.curve_sample, self.spec.width(), &self.request.device)?;
            state.curve.push(CurvePoint {
                step: state.step,
                tokens: state.tokens,
                loss: stats.loss,
                fve: stats.fve,
                l0: stats.l0,
                dead: dead_now,
                validation_fve,
            });
        }
        self.stages.evaluate += evaluate_started.elapsed().as_secs_f64();
        self.report(state, &stats, dead_now, settings.k);
        if checkpoint {
            state.threshold = coder.threshold;
            state.adam_t = adam.t;
            state.seconds = self.seconds();
            save_checkpoint(self.checkpoint_dir, coder, adam, state)?;
        }
        Ok(stop.then_some(state.step))
    }

    fn tokens_per_second(&self, state: &CheckpointState) -> f64 {
        (state.tokens - self.tokens_at_start) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    fn report(&self, state: &CheckpointState, stats: &StepStats, dead: usize, k: usize) {
        let rate = self.tokens_per_second(state);
        let message = format!(
            "loss {:.4} fve {:.3} L0 {:.1} dead {dead} k {k} · {rate:.0} tok/s",
            stats.loss, stats.fve, stats.l0
        );
        let (total, p) = (self.schedule.total_steps, &self.progress);
        if p.log_lines && p.shown && state.step.is_multiple_of(p.log_every) {
            let left = (total - state.step) as f64 * self.config().batch_size as f64 / rate.max(1e-9);
            eprintln!(
                "train {}: step {}/{total} {message}, about {left:.0} s left",
                self.base.id, state.step
            );
        }
        p.bar.set_message(message);
        p.bar.set_position(state.step);
    }

    /// Measures the trained coder on held-out rows and writes it with its manifest.
    fn finish(
        self,
        layout: &CacheLayout,
        source: &TrainingSource,
        kind: RowKind,
        coder: &SparseCoder,
        state: CheckpointState,
    ) -> Result<Outcome> {
        let seconds = self.seconds();
        let rate = self.tokens_per_second(&state);
        let statistics_started = Instant::now();
        let config = self.config();
        let (latents, validation) = latent_table(coder, source, kind, self.scale, config.max_validation_tokens)?;
        let statistics = statistics_started.elapsed().as_secs_f64();
        let mut manifest = self.base.manifest(
            self.spec.latents,
            self.scale.to_vec(),
            host_values(coder.b_dec.as_tensor())?,
        );
        manifest.threshold = (self.spec.sparsity == Sparsity::BatchTopK).then_some(coder.threshold);
        manifest.train_tokens = state.tokens;
        manifest.steps = state.step;
        manifest.seconds = seconds;
        manifest.curve = state.curve;
        manifest.validation = validation;
        eprintln!(
            "{} {}: {} latents, {} steps, {} tokens in {:.1} s ({:.0} tok/s, this run); held-out FVE {:.3}, L0 {:.1}, dead {:.1}%",
            config.kind.name(),
            manifest.id,
            manifest.latents,
            manifest.steps,
            manifest.train_tokens,
            seconds,
            rate,
            manifest.validation.fve,
            manifest.validation.l0,
            100.0 * manifest.validation.dead_fraction
        );
        eprintln!(
            "  stages: {} {:.1} s, read and shuffle {:.1} s, curve and checkpoints {:.1} s, latent statistics {statistics:.1} s",
            self.backend.name(),
            self.stages.step,
            self.stages.read,
            self.stages.evaluate
        );
        let written = store::write(layout, manifest, &latents)?;
        fs::remove_dir_all(self.checkpoint_dir).ok();
        Ok(Outcome::Trained(written))
    }
}

/// Which latents have not fired for `dead_tokens` tokens.
fn dead_latents(state: &CheckpointState, dead_tokens: u64) -> Vec<bool> {
    state.tokens_since_fired.iter().map(|t| *t >= dead_tokens).collect()
}
