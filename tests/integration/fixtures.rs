//! Synthetic caches shared by the tests, built once per test run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::prelude::SessionContext;
use diffsql_core::cache::synth::{self, SynthSpec};
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::{ActivationBatch, ActivationWriter, CacheLayout, PartitionKey, WriteOptions};
use diffsql_sql::tables::{VectorTable, VectorTableKind};
use diffsql_udfs::vector::ElementType;

/// Rows per file and per row group of the fixtures: small, so that every table has several files and
/// scan units and the aggregates merge partial states across partitions.
pub const ROWS_PER_FILE: usize = 128;
pub const ROW_GROUP_ROWS: usize = 32;
pub const TOKENS: usize = 300;
pub const SEQ_LEN: usize = 10;
pub const D_MODEL: usize = 8;

/// Every diffing method, from its config's file name in `configs/diffing/method/` (a new method is tested by
/// the tests that run them all without being listed anywhere else).
pub fn methods() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/diffing/method");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let stem = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == "toml").then_some(stem)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{}: {names:?}", dir.display());
    names
}

pub struct Caches {
    _dir: tempfile::TempDir,
    pub f32: PathBuf,
    pub bf16: PathBuf,
    pub f16: PathBuf,
    pub mismatch: PathBuf,
}

pub fn spec(dtype: ElementType) -> SynthSpec {
    SynthSpec {
        model: "m".into(),
        organisms: vec!["caps".into(), "roman".into()],
        layers: vec![0, 1, 2, 3],
        tokens: TOKENS,
        seq_len: SEQ_LEN,
        d_model: D_MODEL,
        dtype,
        seed: 7,
        dataset: "synthetic".into(),
        options: small_files(),
        noise: 0.0,
    }
}

pub fn small_files() -> WriteOptions {
    WriteOptions {
        rows_per_file: ROWS_PER_FILE,
        row_group_rows: ROW_GROUP_ROWS,
        ..Default::default()
    }
}

/// The shared fixture caches.
pub fn caches() -> &'static Caches {
    static CACHES: OnceLock<Caches> = OnceLock::new();
    CACHES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, dtype| {
            let path = dir.path().join(name);
            synth::write(&CacheLayout::new(&path), &spec(dtype), |_| {}).unwrap();
            path
        };
        let f32 = make("f32", ElementType::Float32);
        train_dictionaries(&CacheLayout::new(&f32));
        let bf16 = make("bf16", ElementType::BFloat16);
        let f16 = make("f16", ElementType::Float16);
        let mismatch = dir.path().join("mismatch");
        write_mismatched(&mismatch);
        Caches {
            _dir: dir,
            f32,
            bf16,
            f16,
            mismatch,
        }
    })
}

/// Trains a PCA (2 components), an SAE on ft − base and a crosscoder (16 latents each) on caps at layer 1 of
/// the float32 cache, for `tests/slt/dictionaries.slt`. ft − base is there the constant 2·e₁ (synth).
fn train_dictionaries(layout: &CacheLayout) {
    for kind in ["pca", "sae_difference", "crosscoder"] {
        let config: diffsql_core::config::TrainConfig = toml::from_str(&format!(
            "kind = \"{kind}\"\nlayer = 1\nexpansion = 2\nk = 2\nbatch_size = 64\nepochs = 2\nwarmup_steps = 2\nlr = 1e-3\ncomponents = 2\nvalidation_fraction = 0.1"
        ))
        .unwrap();
        let request = diffsql_train::TrainRequest {
            model: "m".into(),
            organism: "caps".into(),
            layer: 1,
            config,
            device: candle_core::Device::Cpu,
            progress: false,
            stop_after_steps: None,
        };
        diffsql_train::ensure(layout, &request).unwrap();
    }
}

/// A cache whose organism `bad` holds other tokens than its base at layer 0.
fn write_mismatched(path: &Path) {
    let layout = CacheLayout::new(path);
    let mut base_only = spec(ElementType::Float32);
    base_only.organisms.clear();
    base_only.layers = vec![0];
    synth::write(&layout, &base_only, |_| {}).unwrap();
    let enc = VectorEncoding::new(ElementType::Float32, D_MODEL);
    let mut w =
        ActivationWriter::create(&layout, PartitionKey::activations("m", "bad", 0), enc, small_files()).unwrap();
    let n = TOKENS;
    let seq: Vec<i64> = (0..n).map(|i| (i / SEQ_LEN) as i64).collect();
    let pos: Vec<i32> = (0..n).map(|i| (i % SEQ_LEN) as i32).collect();
    let tok: Vec<i32> = vec![5; n];
    let vectors = vec![0.5f32; n * D_MODEL];
    w.push(&ActivationBatch {
        dataset: "synthetic",
        split: "train",
        seq_id: &seq,
        pos: &pos,
        token_id: &tok,
        vectors: &vectors,
    })
    .unwrap();
    w.finish().unwrap();
}

/// A session on the float32 cache, with the other fixtures' vector tables registered beside it as
/// `acts_bf16`, `acts_f16`, `activations_bf16` and `acts_mismatch`.
pub fn session() -> SessionContext {
    let c = caches();
    let ctx = diffsql_sql::open_session(&c.f32).unwrap();
    let register = |name: &str, path: &Path, kind| {
        let table = VectorTable::open(CacheLayout::new(path), kind).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    };
    register("acts_bf16", &c.bf16, VectorTableKind::Acts);
    register("activations_bf16", &c.bf16, VectorTableKind::Activations);
    register("acts_f16", &c.f16, VectorTableKind::Acts);
    register("acts_mismatch", &c.mismatch, VectorTableKind::Acts);
    ctx
}
