//! Training a dictionary end to end: find or resume it, stream shuffled rows from the cache, fit the
//! normalisation once, train with progress and checkpoints, measure it on held-out sequences, and write it.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{load_checkpoint, save_checkpoint, CheckpointState};
use super::data::{RowKind, Shuffle, SourceSpec, Split, TrainingSource};
use super::host::HostTrainer;
use super::pca::Covariance;
use super::sparse_coder::{host_values, Adam, CoderSpec, SparseCoder, Sparsity, StepSettings};
use super::statistics::{latent_table, validation_fve};
use super::store::{self, CurvePoint, DictionaryId, DictionaryManifest, LatentColumns, Validation};
use crate::cache::layout::CacheLayout;
use crate::cache::writer::WriteLock;
use crate::config::{DictionaryKind, SparsityKind, TrainConfig};

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: String,
    pub organism: String,
    /// A resolved layer index.
    pub layer: i32,
    pub config: TrainConfig,
    pub device: Device,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Stop (after a checkpoint) once this many steps are done: how tests stand in for a killed run.
    pub stop_after_steps: Option<u64>,
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Trained(DictionaryManifest),
    /// A complete dictionary with these settings was already in the cache: nothing was done.
    Existing(DictionaryManifest),
    /// Stopped at `stop_after_steps`, with a checkpoint.
    Stopped {
        step: u64,
    },
}

impl Outcome {
    pub fn manifest(&self) -> Option<&DictionaryManifest> {
        match self {
            Outcome::Trained(m) | Outcome::Existing(m) => Some(m),
            Outcome::Stopped { .. } => None,
        }
    }
}

/// The dictionary's name: the configured one, or `<kind>_L<layer>`.
pub fn dictionary_name(config: &TrainConfig, layer: i32) -> String {
    if config.name.is_empty() {
        format!("{}_L{layer}", config.kind.name())
    } else {
        config.name.clone()
    }
}

/// Rows of validation data the curve's periodic evaluations use.
const CURVE_VALIDATION_ROWS: usize = 1024;
/// Training rows the normalisation is fitted on (the first ones in file order).
const NORMALISATION_ROWS: usize = 65_536;

/// Trains the dictionary a request describes, unless it is complete already (then this is a no-op).
pub fn ensure(layout: &CacheLayout, request: &TrainRequest) -> Result<Outcome> {
    let config = &request.config;
    config.validate()?;
    let id = DictionaryId {
        model: request.model.clone(),
        organism: request.organism.clone(),
        name: dictionary_name(config, request.layer),
    };
    let source_fingerprint = layout
        .manifest(&crate::cache::layout::PartitionKey::activations(
            &id.model,
            &id.organism,
            request.layer,
        ))?
        .and_then(|m| m.token_fingerprint)
        .unwrap_or_default();
    if let Some(existing) = store::read_manifest(layout, &id)? {
        if existing.settings == *config
            && existing.layer == request.layer
            && existing.source_fingerprint == source_fingerprint
        {
            return Ok(Outcome::Existing(existing));
        }
        bail!(
            "dictionary {id} exists with other settings or was trained on other cached tokens: delete {} to retrain it, or set diffing.method.train.name to keep both",
            store::dictionary_dir(layout, &id).display()
        );
    }
    layout.ensure_writable()?;
    let checkpoints = store::checkpoint_dir(layout, &id);
    fs::create_dir_all(layout.staging_dir())
        .with_context(|| format!("cannot create {}", layout.staging_dir().display()))?;
    let mut lock_path = checkpoints.as_os_str().to_owned();
    lock_path.push(".lock");
    let _lock = WriteLock::acquire(lock_path.into(), &format!("dictionary {id}"))?;
    let source = TrainingSource::open(
        layout,
        &SourceSpec {
            model: id.model.clone(),
            organism: id.organism.clone(),
            layer: request.layer,
            datasets: config.datasets.clone(),
            validation_fraction: config.validation_fraction,
            max_train_rows: config.max_tokens,
        },
    )?;
    let base = ManifestBase {
        id,
        layer: request.layer,
        config: config.clone(),
        source_fingerprint,
        datasets: source.datasets.clone(),
        d_model: source.d_model(),
    };
    match config.kind {
        DictionaryKind::Pca => train_pca(layout, &source, base).map(Outcome::Trained),
        DictionaryKind::Crosscoder | DictionaryKind::SaeDifference => train_coder(layout, &source, base, request),
    }
}

/// What every manifest records besides the results.
struct ManifestBase {
    id: DictionaryId,
    layer: i32,
    config: TrainConfig,
    source_fingerprint: String,
    datasets: Vec<String>,
    d_model: usize,
}

impl ManifestBase {
    fn manifest(&self, latents: usize, scale: Vec<f32>, bias: Vec<f32>) -> DictionaryManifest {
        DictionaryManifest {
            format: store::DICTIONARY_FORMAT,
            id: self.id.clone(),
            kind: self.config.kind,
            layer: self.layer,
            datasets: self.datasets.clone(),
            d_model: self.d_model,
            latents,
            settings: self.config.clone(),
            scale,
            bias,
            threshold: None,
            train_tokens: 0,
            steps: 0,
            seconds: 0.0,
            curve: Vec::new(),
            validation: Validation::default(),
            source_fingerprint: self.source_fingerprint.clone(),
            latents_bytes: 0,
            latents_xxh3: String::new(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

fn too_few(base: &ManifestBase, rows: usize, need: usize, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "dictionary {}: layer {} has {rows} training tokens, {what} needs at least {need}: preprocess more tokens (preprocessing.max_tokens, more datasets) or {}",
        base.id,
        base.layer,
        if base.config.kind == DictionaryKind::Pca { "use more data" } else { "lower diffing.method.train.batch_size" }
    )
}

fn train_pca(layout: &CacheLayout, source: &TrainingSource, base: ManifestBase) -> Result<DictionaryManifest> {
    let started = Instant::now();
    let d = source.d_model();
    if source.train_rows < 2 {
        return Err(too_few(&base, source.train_rows, 2, "PCA"));
    }
    let bar = progress_bar(source.train_rows as u64, "rows");
    let mut cov = Covariance::new(d);
    // Reading and decoding on one thread, the covariance products on this one.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<f32>>>(2);
        scope.spawn(move || {
            let mut stream = source.stream(Split::Train, RowKind::Difference, None);
            loop {
                let rows = stream.next_batch(16_384);
                let done = rows.as_ref().map_or(true, |r| r.is_empty());
                if tx.send(rows).is_err() || done {
                    break;
                }
            }
        });
        for rows in rx {
            let rows = rows?;
            if rows.is_empty() {
                break;
            }
            cov.add(&rows)?;
            bar.set_position(cov.rows());
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let pass_seconds = started.elapsed().as_secs_f64();
    let components = cov.components(base.config.components)?;
    let kept = components.variance.len();
    // Validation: the share of held-out variance the kept components explain.
    let mut stream = source.stream(Split::Validation, RowKind::Difference, None);
    let (mut explained, mut total, mut tokens) = (0f64, 0f64, 0u64);
    while (tokens as usize) < base.config.max_validation_tokens {
        let rows = stream.next_batch(4096)?;
        if rows.is_empty() {
            break;
        }
        let n = rows.len() / d;
        let mean: Vec<f32> = components.mean.iter().map(|m| *m as f32).collect();
        let mut centred = rows;
        diffsql_udfs::kernels::subtract_from_rows(&mut centred, &mean);
        let y = Tensor::from_vec(centred, (n, d), &Device::Cpu)?;
        let c = Tensor::from_slice(&components.vectors, (kept, d), &Device::Cpu)?;
        total += y.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        explained += y.matmul(&c.t()?)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        tokens += n as u64;
    }
    let mut manifest = base.manifest(kept, vec![1.0], components.mean.iter().map(|m| *m as f32).collect());
    manifest.train_tokens = components.rows;
    manifest.seconds = started.elapsed().as_secs_f64();
    manifest.validation = Validation {
        tokens,
        fve: if total > 0.0 { explained / total } else { 0.0 },
        l0: kept as f64,
        dead_fraction: 0.0,
    };
    let latents = LatentColumns::default()
        .ids(kept)
        .vectors("dec", components.vectors, d)?
        .f64("explained_variance", components.variance)
        .f64("explained_variance_ratio", components.ratio)
        .batch()?;
    eprintln!(
        "pca {}: {} components of {} rows at layer {} in {:.2} s (the covariance pass {:.2} s, {:.0} rows/s); held-out variance explained {:.3}",
        manifest.id,
        kept,
        components.rows,
        manifest.layer,
        manifest.seconds,
        pass_seconds,
        components.rows as f64 / pass_seconds.max(1e-9),
        manifest.validation.fve
    );
    store::write(layout, manifest, &latents)
}

/// Seconds a training run spent per stage (this process).
#[derive(Debug, Default)]
struct TrainStages {
    read: f64,
    step: f64,
    evaluate: f64,
}

fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let bar = crate::progress::bar(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("a valid template"),
    );
    bar
}

/// Multiplies each side of every row by its scale.
pub(super) fn apply_scale(rows: &mut [f32], scale: &[f32], d: usize) {
    diffsql_udfs::kernels::scale_sides(rows, d, scale);
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

fn train_coder(
    layout: &CacheLayout,
    source: &TrainingSource,
    base: ManifestBase,
    request: &TrainRequest,
) -> Result<Outcome> {
    let config = &base.config;
    let d = source.d_model();
    let (sides, kind, sae) = match config.kind {
        DictionaryKind::Crosscoder => (2, RowKind::Pair, false),
        _ => (1, RowKind::Difference, true),
    };
    if source.train_rows < config.batch_size {
        return Err(too_few(
            &base,
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
    let device = &request.device;
    let mut coder = SparseCoder::new(spec, config.seed, device)?;
    let mut adam = Adam::new(&coder.vars())?;
    let dir = store::checkpoint_dir(layout, &base.id);
    let resumed = load_checkpoint(&dir, &mut coder, &mut adam, config, &base.source_fingerprint)?;
    let scale = match &resumed {
        Some(s) => s.scale.clone(),
        None => fit_scale(source, kind, sides)?,
    };
    let steps_per_epoch = source.train_rows.div_ceil(config.batch_size) as u64;
    let total_steps = steps_per_epoch * config.epochs as u64;
    let k_max = if config.k_max == 0 { config.k } else { config.k_max };
    let k_aux = if config.k_aux == 0 {
        (d / 2).max(1)
    } else {
        config.k_aux
    };
    let mut state = resumed.unwrap_or(CheckpointState {
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
        eprintln!("train {}: resuming at step {} of {total_steps}", base.id, state.step);
    }
    // A small held-out sample for the curve.
    let mut curve_sample = source
        .stream(Split::Validation, kind, None)
        .next_batch(CURVE_VALIDATION_ROWS)?;
    apply_scale(&mut curve_sample, &scale, d);
    // About 20 curve points, at least 10 steps apart (each evaluates the held-out sample).
    let curve_every = (total_steps / 20).max(10);
    let bar = progress_bar(total_steps, "steps");
    if !request.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position(state.step);
    // Off a terminal (a log, CI) the bar is hidden: print a line every tenth of the run instead.
    let log_lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = (total_steps / 10).max(1);
    // BatchTopK on the CPU trains sparsely on host buffers (diffsql-kernels); otherwise candle's autograd.
    let mut host = if HostTrainer::applies(&coder) {
        Some(HostTrainer::new(&coder, &adam)?)
    } else {
        None
    };
    let run_started = Instant::now();
    let mut stages = TrainStages::default();
    let tokens_at_start = state.tokens;
    let seconds_before = state.seconds;
    while state.epoch < config.epochs as u64 {
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
            stages.read += read_started.elapsed().as_secs_f64();
            if rows.is_empty() {
                break;
            }
            apply_scale(&mut rows, &scale, d);
            let n = rows.len() / spec.width();
            let step = state.step as f64;
            let anneal = if config.k_anneal_steps == 0 {
                1.0
            } else {
                (step / config.k_anneal_steps as f64).min(1.0)
            };
            let k = (k_max as f64 - (k_max - config.k) as f64 * anneal).round() as usize;
            let dead: Vec<bool> = state
                .tokens_since_fired
                .iter()
                .map(|t| *t >= config.dead_tokens)
                .collect();
            let l1_warmup = ((step + 1.0) / (0.05 * total_steps as f64).max(1.0)).min(1.0);
            let settings = StepSettings {
                k,
                k_aux,
                dead,
                auxk_alpha: config.auxk_alpha as f32,
                l1: (config.l1 * l1_warmup) as f32,
            };
            let lr = config.lr * ((step + 1.0) / config.warmup_steps.max(1) as f64).min(1.0);
            let step_started = Instant::now();
            let stats = match host.as_mut() {
                Some(h) => h.step(&coder, &adam, &rows, &settings, lr)?,
                None => {
                    let x = Tensor::from_vec(rows, (n, spec.width()), device)?;
                    let (loss, stats) = coder.loss(&x, &settings)?;
                    let mut grads = loss.backward()?;
                    coder.project_decoder_gradient(&mut grads)?;
                    adam.step(&coder.vars(), &grads, lr)?;
                    coder.normalise_decoder()?;
                    stats
                }
            };
            stages.step += step_started.elapsed().as_secs_f64();
            if !stats.loss.is_finite() {
                bail!(
                    "dictionary {}: the loss became {} at step {}: lower diffing.method.train.lr",
                    base.id,
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
            let dead_now = state
                .tokens_since_fired
                .iter()
                .filter(|t| **t >= config.dead_tokens)
                .count();
            let stop = request.stop_after_steps.is_some_and(|s| state.step >= s);
            let checkpoint = state.step % config.checkpoint_every as u64 == 0 || stop;
            let curve_point = state.step % curve_every == 0 || state.step == total_steps;
            let evaluate_started = Instant::now();
            if let (Some(h), true) = (host.as_ref(), checkpoint || curve_point) {
                h.store(&coder, &mut adam)?;
            }
            if curve_point {
                let validation_fve = validation_fve(&coder, &curve_sample, spec.width(), device)?;
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
            stages.evaluate += evaluate_started.elapsed().as_secs_f64();
            let rate = (state.tokens - tokens_at_start) as f64 / run_started.elapsed().as_secs_f64().max(1e-9);
            let message = format!(
                "loss {:.4} fve {:.3} L0 {:.1} dead {dead_now} k {k} · {rate:.0} tok/s",
                stats.loss, stats.fve, stats.l0
            );
            if log_lines && request.progress && state.step % log_every == 0 {
                let left = (total_steps - state.step) as f64 * config.batch_size as f64 / rate.max(1e-9);
                eprintln!(
                    "train {}: step {}/{total_steps} {message}, about {left:.0} s left",
                    base.id, state.step
                );
            }
            bar.set_message(message);
            bar.set_position(state.step);
            if checkpoint {
                state.threshold = coder.threshold;
                state.adam_t = adam.t;
                state.seconds = seconds_before + run_started.elapsed().as_secs_f64();
                save_checkpoint(&dir, &coder, &adam, &state)?;
            }
            if stop {
                bar.abandon();
                return Ok(Outcome::Stopped { step: state.step });
            }
        }
        state.epoch += 1;
        state.batches_in_epoch = 0;
    }
    bar.finish_and_clear();
    if let Some(h) = &host {
        h.store(&coder, &mut adam)?;
    }
    let seconds = seconds_before + run_started.elapsed().as_secs_f64();
    let statistics_started = Instant::now();
    let (latents, validation) = latent_table(&coder, source, kind, &scale, config.max_validation_tokens)?;
    let statistics = statistics_started.elapsed().as_secs_f64();
    let mut manifest = base.manifest(spec.latents, scale, host_values(coder.b_dec.as_tensor())?);
    manifest.threshold = (spec.sparsity == Sparsity::BatchTopK).then_some(coder.threshold);
    manifest.train_tokens = state.tokens;
    manifest.steps = state.step;
    manifest.seconds = seconds;
    manifest.curve = state.curve;
    manifest.validation = validation;
    eprintln!(
        "{} {}: {} latents, {} steps, {} tokens in {:.1} s ({:.0} tok/s, this run); held-out FVE {:.3}, L0 {:.1}, dead {:.1}%",
        base.config.kind.name(),
        manifest.id,
        manifest.latents,
        manifest.steps,
        manifest.train_tokens,
        seconds,
        (state.tokens - tokens_at_start) as f64 / run_started.elapsed().as_secs_f64().max(1e-9),
        manifest.validation.fve,
        manifest.validation.l0,
        100.0 * manifest.validation.dead_fraction
    );
    eprintln!(
        "  stages: {} {:.1} s, read and shuffle {:.1} s, curve and checkpoints {:.1} s, latent statistics {statistics:.1} s",
        if host.is_some() { "sparse CPU steps" } else { "steps" },
        stages.step,
        stages.read,
        stages.evaluate
    );
    let written = store::write(layout, manifest, &latents)?;
    fs::remove_dir_all(&dir).ok();
    Ok(Outcome::Trained(written))
}
