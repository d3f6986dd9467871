//! Training a dictionary end to end: find or resume it, stream shuffled rows from the cache, fit the
//! normalisation once, train with progress and checkpoints, measure it on held-out sequences, and write it.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::data::{RowKind, SourceSpec, Split, TrainingSource};
use super::pca::Covariance;
use super::request::{progress_bar, too_few, ManifestBase};
pub use super::request::{Outcome, TrainRequest};
use super::store::{self, DictionaryId, DictionaryManifest, LatentColumns, Validation};
use diffsql_core::cache::layout::CacheLayout;
use diffsql_core::cache::writer::WriteLock;
use diffsql_core::config::{DictionaryKind, TrainConfig};

/// The dictionary's name: the configured one, or `<kind>_L<layer>`.
pub fn dictionary_name(config: &TrainConfig, layer: i32) -> String {
    if config.name.is_empty() {
        format!("{}_L{layer}", config.kind.name())
    } else {
        config.name.clone()
    }
}

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
        .manifest(&diffsql_core::cache::layout::PartitionKey::activations(
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
        DictionaryKind::Crosscoder | DictionaryKind::SaeDifference => {
            super::coder::train(layout, &source, base, request)
        }
    }
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
        diffsql_kernels::dense::subtract_from_rows(&mut centred, &mean);
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
