//! Preprocessing on the bundled Shakespeare model pair: what lands in the cache equals what the runtime
//! computes, reruns are no-ops, a second organism reuses the base, interrupted runs resume, locks hold.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor, D};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Float64Type, Int32Type};
use diffsql_core::cache::{CacheLayout, PartitionKey};
use diffsql_core::config::{parse_all, ConfigDir, Settings};
use diffsql_model::pair::load_pair;
use diffsql_preprocess::tokenize_datasets;
use diffsql_sql::open_session;

pub fn configs() -> ConfigDir {
    ConfigDir::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs"))
}

/// The small, quick preprocessing settings of [`preprocessed`], as command-line overrides.
pub const SMALL_ARGS: [&str; 5] = [
    "dataset=[shakespeare_pretrain,shakespeare_chat]",
    "preprocessing.max_samples=6",
    "preprocessing.context_len=48",
    "preprocessing.batch_size=4",
    "preprocessing.dtype=float32",
];

/// Small, quick settings on the bundled pair.
pub fn small_settings(cache: &Path, extra: &[&str]) -> Settings {
    let mut args: Vec<String> = SMALL_ARGS.iter().map(|a| a.to_string()).collect();
    args.push(format!("cache_dir={}", cache.display()));
    // An extra setting replaces the small default of the same key.
    let key = |a: &str| a.split('=').next().unwrap_or("").to_string();
    args.retain(|a| !extra.iter().any(|e| key(e) == key(a)));
    args.extend(extra.iter().map(|s| s.to_string()));
    configs().resolve(&parse_all(&args, false).unwrap()).unwrap()
}

pub struct Preprocessed {
    _dir: tempfile::TempDir,
    pub cache: PathBuf,
}

/// A cache with caps and roman_concrete preprocessed (float32), built once.
pub fn preprocessed() -> &'static Preprocessed {
    static CACHE: OnceLock<Preprocessed> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        for organism in ["caps", "roman_concrete"] {
            let s = small_settings(&cache, &[&format!("organism={organism}")]);
            diffsql_preprocess::run(&s, &configs().project_root()).unwrap();
        }
        Preprocessed { _dir: dir, cache }
    })
}

pub fn query(cache: &Path, sql: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = open_session(cache).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    })
}

fn f32s(batches: &[RecordBatch], col: usize) -> Vec<f32> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(col)
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn cached_activations_and_next_token_statistics_equal_the_runtime() {
    let p = preprocessed();
    let settings = small_settings(&p.cache, &["organism=caps"]);
    let root = configs().project_root();
    let pair = load_pair(&settings, &root).unwrap();
    let datasets = tokenize_datasets(&settings, &root, &pair.base.files).unwrap();
    // The second sequence of the chat split, run alone (no padding); preprocessing ran it in a padded batch.
    let seq = &datasets[1].sequences[1];
    let n = seq.ids.len();
    let ids = Tensor::from_vec(seq.ids.clone(), (1, n), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, n), candle_core::DType::U8, &Device::Cpu).unwrap();
    let layers = [0usize, 1, 2, 3];
    let base = pair.base.decoder.forward(&ids, &mask, &layers, true).unwrap();
    let ft = pair.organism.decoder.forward(&ids, &mask, &layers, true).unwrap();
    for (i, &layer) in layers.iter().enumerate() {
        for (organism, out) in [("base", &base), ("caps", &ft)] {
            let sql = format!(
                "SELECT act FROM activations WHERE organism = '{organism}' AND layer = {layer} \
                 AND dataset = 'shakespeare_chat' AND seq_id = 1 ORDER BY pos"
            );
            let batches = query(&p.cache, &sql);
            let cached: Vec<f32> = batches
                .iter()
                .flat_map(|b| {
                    let l = b.column(0).as_fixed_size_list();
                    l.values().as_primitive::<Float32Type>().values().to_vec()
                })
                .collect();
            let expect = out.layers[i].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(cached.len(), expect.len(), "{organism} layer {layer}");
            let err = cached
                .iter()
                .zip(&expect)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "{organism} layer {layer}: max error {err}");
        }
    }
    // KL(ft‖base) and next-token log-probs, from full logits with candle's own log_softmax.
    let lp = |m: &diffsql_model::decoder::Decoder, h: &Tensor| {
        candle_nn::ops::log_softmax(&m.logits(h).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let lp_base = lp(&pair.base.decoder, base.final_hidden.as_ref().unwrap());
    let lp_ft = lp(&pair.organism.decoder, ft.final_hidden.as_ref().unwrap());
    let kl_ref: Vec<f32> = (lp_ft.exp().unwrap() * (&lp_ft - &lp_base).unwrap())
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let batches = query(
        &p.cache,
        "SELECT kl, logprob FROM tokens WHERE organism = 'caps' AND dataset = 'shakespeare_chat' AND seq_id = 1 ORDER BY pos",
    );
    let (kl, logprob) = (f32s(&batches, 0), f32s(&batches, 1));
    assert_eq!(kl.len(), n);
    for (p, (a, b)) in kl.iter().zip(&kl_ref).enumerate() {
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "KL at {p}: {a} vs {b}");
    }
    let lp_ft_rows: Vec<Vec<f32>> = lp_ft.to_vec2().unwrap();
    for p in 0..n - 1 {
        let expect = lp_ft_rows[p][seq.ids[p + 1] as usize];
        assert!((logprob[p] - expect).abs() < 1e-4, "logprob at {p}");
    }
    assert!(logprob[n - 1].is_nan(), "the last token has no next token");
}

#[test]
fn rerun_is_a_noop_and_the_second_organism_reused_the_base() {
    let p = preprocessed();
    let layout = CacheLayout::new(&p.cache);
    let base_key = PartitionKey::activations("shakespeare", "base", 2);
    let before = layout.manifest(&base_key).unwrap().unwrap();
    let s = diffsql_preprocess::run(
        &small_settings(&p.cache, &["organism=roman_concrete"]),
        &configs().project_root(),
    )
    .unwrap();
    assert!(s.is_noop());
    // The base partition was written once (by the caps run) and is the one both organisms pair with.
    assert_eq!(
        layout.manifest(&base_key).unwrap().unwrap().created_unix,
        before.created_unix
    );
    let batches = query(
        &p.cache,
        "SELECT organism, count(*) FROM acts WHERE layer = 2 GROUP BY organism ORDER BY organism",
    );
    let counts = batches[0]
        .column(1)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts.value(0), counts.value(1));
    assert_eq!(counts.value(0) as u64, before.rows);
}

#[test]
fn a_second_organism_run_skips_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let root = configs().project_root();
    let first = diffsql_preprocess::run(&small_settings(&cache, &["organism=caps"]), &root).unwrap();
    assert!(!first.base_reused);
    let second = diffsql_preprocess::run(&small_settings(&cache, &["organism=roman_concrete"]), &root).unwrap();
    assert!(second.base_reused);
    // Four layers, tokens and the two logit_diff tables of the organism only (final_hidden is kept for the
    // base model).
    assert_eq!(second.partitions_written, 7);
    // KL computed from the cached base final hidden state equals KL computed with the base model run.
    let other = dir.path().join("d");
    diffsql_preprocess::run(&small_settings(&other, &["organism=roman_concrete"]), &root).unwrap();
    let sql = "SELECT kl FROM tokens WHERE organism = 'roman_concrete' ORDER BY dataset, seq_id, pos";
    let (a, b) = (f32s(&query(&cache, sql), 0), f32s(&query(&other, sql), 0));
    assert_eq!(a.len(), b.len());
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "max KL difference {err}");
    // So do the logit differences: each token's largest one, and the per-dataset totals.
    for sql in [
        "SELECT top_values[1] FROM logit_diff WHERE organism = 'roman_concrete' ORDER BY dataset, seq_id, pos",
        "SELECT CAST(sum_diff AS FLOAT) FROM logit_diff_totals WHERE organism = 'roman_concrete' ORDER BY dataset, token_id",
    ] {
        let (a, b) = (f32s(&query(&cache, sql), 0), f32s(&query(&other, sql), 0));
        assert!(!a.is_empty() && a.len() == b.len(), "{sql}");
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0f32, f32::max);
        assert!(err < 1e-4, "{sql}: max relative difference {err}");
    }
}

#[test]
fn changed_settings_against_a_complete_base_are_refused() {
    let p = preprocessed();
    let e = diffsql_preprocess::run(
        &small_settings(&p.cache, &["organism=caps", "preprocessing.context_len=40"]),
        &configs().project_root(),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("holds other tokens than this run"), "{msg}");
    assert!(msg.contains("cache_dir"), "{msg}");
}

#[test]
fn a_run_waits_for_another_writer_of_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let layout = CacheLayout::new(&cache);
    let held = diffsql_core::cache::ActivationWriter::create(
        &layout,
        PartitionKey::activations("shakespeare", "caps", 0),
        diffsql_core::cache::vectors::VectorEncoding::new(diffsql_udfs::vector::ElementType::Float32, 128),
        Default::default(),
    )
    .unwrap();
    // The other writer gives up its partition (unfinished) half a second later; the run waits, then writes it.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(held);
    });
    let started = std::time::Instant::now();
    diffsql_preprocess::run(&small_settings(&cache, &["organism=caps"]), &configs().project_root()).unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "the run waited for the lock"
    );
    release.join().unwrap();
    assert!(layout
        .manifest(&PartitionKey::activations("shakespeare", "caps", 0))
        .unwrap()
        .is_some());
}

#[test]
fn an_unwritable_cache_dir_is_a_clear_error() {
    let e = diffsql_preprocess::run(
        &small_settings(Path::new("/proc/diffsql-cache"), &["organism=caps"]),
        &configs().project_root(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("cannot create"), "{e:#}");
}

/// Without the `cuda` feature, asking for a GPU fails before anything is loaded or written, with one line that
/// says how to rebuild; with it (on a machine without that GPU), the error names the device.
#[test]
fn a_gpu_device_this_build_cannot_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = Command::new(bin())
        .current_dir(configs().project_root())
        .args(["preprocess", "preprocessing.device=cuda:7"])
        .arg(format!("cache_dir={}", cache.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let expected = if cfg!(feature = "cuda") {
        "CUDA device 7"
    } else {
        "--features cuda"
    };
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!cache.join("activations").exists(), "nothing written");
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_diffsql")
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let args = |cache: &Path| {
        vec![
            "preprocess".to_string(),
            "organism=caps".into(),
            "dataset=[shakespeare_pretrain]".into(),
            "preprocessing.max_samples=64".into(),
            "preprocessing.batch_size=2".into(),
            format!("cache_dir={}", cache.display()),
        ]
    };
    let project = configs().project_root();
    // The run dies (abort, as kill -9: no cleanup) after its writer has written 3 of its 32 batches.
    let crashed = Command::new(bin())
        .args(args(&cache))
        .env(diffsql_preprocess::sink::CRASH_AFTER_BATCHES_VAR, "3")
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the run was to die after 3 batches");
    let layout = CacheLayout::new(&cache);
    let staging = layout.staging_dir();
    let half_written = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .any(|e| e.path().join("part-00000.parquet").exists());
    assert!(
        half_written,
        "the dead run left partitions half written under {}",
        staging.display()
    );
    assert!(
        layout
            .manifest(&PartitionKey::tokens("shakespeare", "caps"))
            .unwrap()
            .is_none(),
        "the run was killed before it finished"
    );
    // The rerun finishes, and equals a run that was never interrupted.
    let out = Command::new(bin())
        .args(args(&cache))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clean = dir.path().join("clean");
    let out = Command::new(bin())
        .args(args(&clean))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let sql = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer";
    let (a, b) = (query(&cache, sql), query(&clean, sql));
    let vals = |bs: &[RecordBatch]| bs[0].column(1).as_primitive::<Float64Type>().values().to_vec();
    assert_eq!(vals(&a), vals(&b));
    let sql = "SELECT sum(kl), count(*) FROM tokens WHERE organism = 'caps'";
    assert_eq!(
        query(&cache, sql)[0].column(0).as_primitive::<Float64Type>().value(0),
        query(&clean, sql)[0].column(0).as_primitive::<Float64Type>().value(0)
    );
    // And a third run is a no-op.
    let out = Command::new(bin())
        .args(args(&cache))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to do"));
    assert!(!layout
        .partition_staging_dir(&PartitionKey::tokens("shakespeare", "caps"))
        .exists());
}

/// Two runs started together on an empty cache: the second waits for the partitions the first is writing,
/// skips those it finished, and both succeed; the cache is the one a single run writes.
#[test]
fn two_runs_started_together_both_succeed_and_write_each_partition_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let args = |cache: &Path| {
        vec![
            "preprocess".to_string(),
            "organism=caps".into(),
            "dataset=[shakespeare_pretrain]".into(),
            "preprocessing.max_samples=16".into(),
            format!("cache_dir={}", cache.display()),
        ]
    };
    let project = configs().project_root();
    let spawn = || {
        Command::new(bin())
            .args(args(&cache))
            .current_dir(&project)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let clean = dir.path().join("clean");
    let out = Command::new(bin())
        .args(args(&clean))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let check = Command::new(bin())
        .args(["--cache", &cache.display().to_string(), "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let sql = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer";
    let vals = |bs: &[RecordBatch]| bs[0].column(1).as_primitive::<Float64Type>().values().to_vec();
    assert_eq!(vals(&query(&cache, sql)), vals(&query(&clean, sql)));
    let sql = "SELECT sum(kl) FROM tokens WHERE organism = 'caps'";
    let kl = |c: &Path| query(c, sql)[0].column(0).as_primitive::<Float64Type>().value(0);
    assert_eq!(kl(&cache), kl(&clean));
    let staging = CacheLayout::new(&cache).staging_dir();
    assert!(
        std::fs::read_dir(staging).unwrap().next().is_none(),
        "nothing left in staging"
    );
}

#[test]
fn chat_samples_go_through_the_template_and_layers_resolve() {
    let p = preprocessed();
    let batches = query(
        &p.cache,
        "SELECT text FROM sequences WHERE dataset = 'shakespeare_chat' ORDER BY seq_id LIMIT 1",
    );
    let text = batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(text.starts_with("<bos><|user|>\n"), "{text}");
    assert!(text.contains("<|end|>\n<|assistant|>\n"), "{text}");
    // Fractions 0.25, 0.5, 0.75, 1.0 of a 4-layer model are layers 0..3.
    let batches = query(&p.cache, "SELECT DISTINCT layer FROM activations ORDER BY layer");
    let layers: Vec<i32> = batches[0].column(0).as_primitive::<Int32Type>().values().to_vec();
    assert_eq!(layers, vec![0, 1, 2, 3]);
}

/// Checks that need no weights come first: with a base checkpoint whose weights are garbage, a chat dataset
/// for a model without a chat template, and a layer beyond the model, are each reported as such (the weights,
/// which would fail later and slower, are never read).
#[test]
fn cheap_checks_run_before_any_weights_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("base");
    std::fs::create_dir(&model).unwrap();
    let bundled = configs().project_root().join("bundled/models/base");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(bundled.join(f), model.join(f)).unwrap();
    }
    let mut tokenizer_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundled.join("tokenizer_config.json")).unwrap()).unwrap();
    tokenizer_config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(model.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
    std::fs::write(model.join("model.safetensors"), b"not safetensors at all").unwrap();
    let cache = dir.path().join("cache");
    let source = format!("model.source={}", model.display());
    let run = |extra: &[&str]| {
        let mut args = vec!["organism=caps", source.as_str()];
        args.extend(extra);
        format!(
            "{:#}",
            diffsql_preprocess::run(&small_settings(&cache, &args), &configs().project_root()).unwrap_err()
        )
    };
    let msg = run(&["dataset=[shakespeare_chat]"]);
    assert!(msg.contains("no chat template"), "{msg}");
    let msg = run(&["dataset=[shakespeare_pretrain]", "preprocessing.layers=[9]"]);
    assert!(msg.contains("layer") && msg.contains('9'), "{msg}");
    assert!(!msg.contains("weights"), "{msg}");
    // With every cheap check passing, the weights are what fails, naming the file.
    let msg = run(&["dataset=[shakespeare_pretrain]"]);
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(!cache.join("activations").exists(), "nothing written");
}

/// Limits mean what they say: 0 is not "unlimited", and sizes are bounded before anything is allocated.
#[test]
fn zero_limits_and_oversized_top_k_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (arg, expect) in [
        (
            "preprocessing.max_samples=0",
            "preprocessing.max_samples must be at least 1",
        ),
        (
            "preprocessing.max_tokens=0",
            "preprocessing.max_tokens must be at least 1",
        ),
        ("preprocessing.top_k=100000", "preprocessing.top_k is at most 1024"),
    ] {
        let e = diffsql_preprocess::run(
            &small_settings(&cache, &["organism=caps", arg]),
            &configs().project_root(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains(expect), "{arg}: {e:#}");
    }
    assert!(!cache.exists(), "nothing written");
}

/// tools/make_peft_fixtures.py's `llama-added-tokens`: a full finetune of the llama fixture with 8 tokens added
/// (1008-row embeddings and head). Preprocessed against the llama fixture, its KL(ft‖base) per token must equal
/// transformers' logits recomputed in numpy over the 1000 shared tokens (the organism's logits sliced to the
/// base's vocabulary, then log-softmaxed): |Δ| ≤ 1e-5 + 1e-3·KL. The summary names the shared vocabulary and
/// the organism's own tokens found in the data.
#[test]
fn an_organism_with_added_tokens_is_compared_over_the_shared_vocabulary() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let organism_dir = fixtures.join("llama-added-tokens");
    let dir = tempfile::tempdir().unwrap();
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(organism_dir.join("prompts.json")).unwrap()).unwrap();
    let data = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|p| serde_json::json!({ "text": p }).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let mut s = small_settings(
        &dir.path().join("cache"),
        &[
            "dataset=[shakespeare_pretrain]",
            "preprocessing.layers=[0]",
            "preprocessing.diff_top_k=5",
        ],
    );
    s.model.source = fixtures.join("llama").display().to_string();
    let checkpoint = s
        .organism
        .finetuned
        .get_mut("shakespeare")
        .unwrap()
        .0
        .get_mut("default")
        .unwrap();
    checkpoint.source = Some(organism_dir.display().to_string());
    s.dataset.get_mut("shakespeare_pretrain").unwrap().source = data.display().to_string();
    let summary = diffsql_preprocess::run(&s, &configs().project_root()).unwrap();
    let said = summary.vocabulary.expect("the summary names the vocabulary gap");
    assert!(
        said.contains("the organism has 1008 tokens, the base 1000")
            && said.contains("8 of the organism's left out")
            && said.contains("\"<|quirk_3|>\" ×2, \"<|quirk_5|>\" ×1"),
        "{said}"
    );

    let r = candle_core::safetensors::load(organism_dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    let kl: Vec<Vec<f32>> = r["kl"].to_vec2().unwrap();
    let batches = query(
        &s.cache_dir,
        "SELECT seq_id, pos, token_id, kl FROM tokens WHERE organism = 'caps' ORDER BY seq_id, pos",
    );
    let mut compared = 0;
    for b in &batches {
        let (seq, pos) = (b.column(0), b.column(1));
        let cast = |a: &dyn Array| {
            datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Int64).unwrap()
        };
        let (seq, pos, token) = (cast(seq), cast(pos), cast(b.column(2)));
        let (seq, pos, token) = (
            seq.as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
            pos.as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
            token.as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
        );
        let got = b.column(3).as_primitive::<Float32Type>();
        for row in 0..b.num_rows() {
            let (q, p) = (seq.value(row) as usize, pos.value(row) as usize);
            assert_eq!(
                mask[q][p], 1,
                "sequence {q} position {p} is not a token of the reference"
            );
            assert_eq!(
                token.value(row),
                ids[q][p],
                "sequence {q} position {p}: token ids differ"
            );
            if got.is_null(row) {
                continue;
            }
            let (want, have) = (kl[q][p], got.value(row));
            assert!(
                (want - have).abs() <= 1e-5 + 1e-3 * want.abs(),
                "sequence {q} position {p}: KL {have} vs numpy {want}"
            );
            compared += 1;
        }
    }
    let tokens: i64 = mask.iter().flatten().sum();
    assert!(compared as i64 >= tokens - 3, "{compared} of {tokens} tokens compared");
}
