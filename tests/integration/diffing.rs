//! Diffing methods as saved SQL, checked on the synthetic cache whose answers are known in closed form
//! (organism caps shifts coordinate L of every layer-L vector by L + 1; its per-token KL is 0.01·(pos mod 7)),
//! and on the bundled pair against statistics recomputed here from the `tokens` table.

use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use diffsql_core::config::{parse_all, Settings};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::fixtures::caches;
use super::preprocess::{configs, preprocessed};

fn settings(method: &str, model: &str, cache: &Path, results: &Path) -> Settings {
    let args = vec![format!("diffing/method={method}"), "organism=caps".to_string()];
    let mut s = configs().resolve(&parse_all(&args, false).unwrap()).unwrap();
    s.model.name = model.into();
    s.cache_dir = cache.to_path_buf();
    s.results_dir = results.to_path_buf();
    s
}

fn run(s: &Settings) -> diffsql_diffing::MethodResult {
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(diffsql_diffing::run(s, &queries, &configs()))
        .unwrap()
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn column_f64(batches: &[RecordBatch], name: &str) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap();
            let c = datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Float64).unwrap();
            c.as_primitive::<Float64Type>().values().to_vec()
        })
        .collect()
}

fn column_str(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap();
            let c = datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
            c.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn normdiff_method_on_the_synthetic_cache_gives_the_closed_form() {
    let out = tempfile::tempdir().unwrap();
    let r = run(&settings("normdiff", "m", &caches().f32, out.path()));
    let names: Vec<&str> = r.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["layer_stats", "top_tokens", "mean_diff"]);
    let dir = out.path().join("m/caps/normdiff");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["method"], "normdiff");
    assert_eq!(summary["tables"][0]["csv"], "layer_stats.csv");

    let stats = read(&dir.join("layer_stats.parquet"));
    let layer: Vec<i32> = stats
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
        .collect();
    let positions = column_str(&stats, "positions");
    let tokens: Vec<i64> = stats
        .iter()
        .flat_map(|b| b.column(3).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let mean = column_f64(&stats, "norm_diff_mean");
    let std = column_f64(&stats, "norm_diff_std");
    assert_eq!(layer.len(), 12, "4 layers × all/first/rest");
    for i in 0..layer.len() {
        // Every token moves by exactly layer + 1.
        assert!((mean[i] - (layer[i] + 1) as f64).abs() < 1e-5, "row {i}");
        assert!(std[i].abs() < 1e-5);
        // 30 sequences of 10 tokens: positions 0-4 are half of them.
        let expect = match positions[i].as_str() {
            "all" => 300,
            "first" | "rest" => 150,
            other => panic!("{other}"),
        };
        assert_eq!(tokens[i], expect);
    }
    // The mean difference is (layer + 1) on coordinate `layer` and zero elsewhere, for all tokens and per position.
    let md = read(&dir.join("mean_diff.parquet"));
    let mut rows = 0;
    for b in &md {
        let layers = b.column(0).as_primitive::<Int32Type>();
        let vectors = b.column_by_name("mean_diff").unwrap().as_fixed_size_list();
        for i in 0..b.num_rows() {
            let v = vectors.value(i);
            let v = v.as_primitive::<datafusion::arrow::datatypes::Float32Type>();
            let l = layers.value(i) as usize;
            for (j, x) in v.values().iter().enumerate() {
                let expect = if j == l { (l + 1) as f32 } else { 0.0 };
                assert!((x - expect).abs() < 1e-5, "layer {l} coordinate {j}: {x}");
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 4 * (1 + 5));
}

#[test]
fn normdiff_mean_diff_pools_position_groups_by_their_token_counts() {
    // With noise every position group has its own mean, so the layer's pooled mean is right only if each
    // group counts by its tokens (30 at each of positions 0-4, 150 after): checked against mean_diff over
    // the layer and over each position computed directly from the vectors.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("noisy");
    let mut spec = super::fixtures::spec(diffsql_udfs::vector::ElementType::Float32);
    spec.noise = 0.5;
    diffsql_core::cache::synth::write(&diffsql_core::cache::CacheLayout::new(&cache), &spec, |_| {}).unwrap();
    let out = tempfile::tempdir().unwrap();
    run(&settings("normdiff", "m", &cache, out.path()));
    let md = read(&out.path().join("m/caps/normdiff/mean_diff.parquet"));
    let ctx = diffsql_sql::session::open_session(&cache).unwrap();
    let direct = |sql: String| -> Vec<f32> {
        let batches = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() });
        let v = batches[0].column(0).as_fixed_size_list().value(0);
        v.as_primitive::<datafusion::arrow::datatypes::Float32Type>()
            .values()
            .to_vec()
    };
    let mut rows = 0;
    for b in &md {
        let layers = b.column(0).as_primitive::<Int32Type>();
        let positions =
            datafusion::arrow::compute::cast(b.column(1), &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
        let positions = positions.as_string::<i32>();
        let tokens = b.column(2).as_primitive::<Int64Type>();
        let vectors = b.column_by_name("mean_diff").unwrap().as_fixed_size_list();
        for i in 0..b.num_rows() {
            let (layer, position) = (layers.value(i), positions.value(i));
            let filter = if position == "all" {
                String::new()
            } else {
                format!(" AND pos = {position}")
            };
            let expect = direct(format!(
                "SELECT mean_diff(base, ft) FROM acts WHERE organism = 'caps' AND layer = {layer}{filter}"
            ));
            assert_eq!(tokens.value(i), if position == "all" { 300 } else { 30 });
            let got = vectors.value(i);
            let got = got.as_primitive::<datafusion::arrow::datatypes::Float32Type>().values();
            assert_eq!(got.len(), expect.len(), "layer {layer} {position}: d_model");
            for (j, (g, e)) in got.iter().zip(&expect).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-6 + 1e-5 * e.abs(),
                    "layer {layer} {position} [{j}]: {g} vs {e}"
                );
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 4 * (1 + 5));
}

#[test]
fn kl_method_statistics_match_a_direct_computation() {
    // Synthetic: KL = 0.01·(pos mod 7) for caps, positions 0..9 in every sequence.
    let out = tempfile::tempdir().unwrap();
    run(&settings("kl", "m", &caches().f32, out.path()));
    let dir = out.path().join("m/caps/kl");
    let stats = read(&dir.join("token_stats.parquet"));
    let per_pos: Vec<f64> = (0..10).map(|p| 0.01 * (p % 7) as f64).collect();
    let mean = per_pos.iter().sum::<f64>() / 10.0;
    assert!((column_f64(&stats, "mean")[0] - mean).abs() < 1e-6);
    assert!((column_f64(&stats, "max")[0] - 0.06).abs() < 1e-6);
    let seq = read(&dir.join("sequence_stats.parquet"));
    assert!((column_f64(&seq, "mean")[0] - mean).abs() < 1e-6);
    assert!(
        column_f64(&seq, "std")[0].abs() < 1e-6,
        "every sequence has the same mean"
    );

    // Bundled pair: per-dataset mean and median of per-token KL, recomputed from the tokens files.
    let p = preprocessed();
    let out = tempfile::tempdir().unwrap();
    let r = run(&settings("kl", "shakespeare", &p.cache, out.path()));
    let dir = out.path().join("shakespeare/caps/kl");
    let stats = read(&dir.join("token_stats.parquet"));
    let datasets = column_str(&stats, "dataset");
    let (means, medians) = (column_f64(&stats, "mean"), column_f64(&stats, "median"));
    let tokens_dir = p.cache.join("tokens/model=shakespeare/organism=caps");
    let files: Vec<_> = std::fs::read_dir(&tokens_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    for (i, dataset) in datasets.iter().enumerate() {
        let mut kl: Vec<f64> = Vec::new();
        for f in &files {
            for b in read(f) {
                let ds = column_str(std::slice::from_ref(&b), "dataset");
                let k = b
                    .column_by_name("kl")
                    .unwrap()
                    .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
                kl.extend(
                    (0..b.num_rows())
                        .filter(|&r| &ds[r] == dataset)
                        .map(|r| k.value(r) as f64),
                );
            }
        }
        kl.sort_by(f64::total_cmp);
        let n = kl.len();
        let median = if n % 2 == 1 {
            kl[n / 2]
        } else {
            (kl[n / 2 - 1] + kl[n / 2]) / 2.0
        };
        let mean = kl.iter().sum::<f64>() / n as f64;
        assert!((means[i] - mean).abs() < 1e-9 * mean.max(1.0), "{dataset} mean");
        assert!((medians[i] - median).abs() < 1e-6 * median.max(1.0), "{dataset} median");
    }
    // The top tokens are in KL order, carry their context and both models' likeliest next tokens.
    let top = read(&dir.join("top_tokens.parquet"));
    let kl = top
        .iter()
        .flat_map(|b| {
            b.column_by_name("kl")
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
                .values()
                .to_vec()
        })
        .collect::<Vec<_>>();
    assert_eq!(kl.len(), 100.min(r.tables[2].rows));
    assert!(kl.windows(2).all(|w| w[0] >= w[1]));
    for col in ["context", "ft_next", "base_next"] {
        assert!(!column_str(&top, col)[0].is_empty(), "{col}");
    }
    assert_eq!(column_str(&top, "ft_next")[0].matches('|').count(), 4);
}

/// The bundled organisms, preprocessed on the pretraining-style split at the middle layer only, for the
/// activation difference lens.
fn adl_cache() -> &'static (tempfile::TempDir, std::path::PathBuf) {
    static CACHE: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        for organism in ["caps", "roman_concrete"] {
            let args: Vec<String> = vec![
                format!("organism={organism}"),
                "dataset=[shakespeare_pretrain]".into(),
                "preprocessing.max_samples=128".into(),
                "preprocessing.layers=[0.5]".into(),
                format!("cache_dir={}", cache.display()),
            ];
            let s = configs().resolve(&parse_all(&args, false).unwrap()).unwrap();
            diffsql_preprocess::run(&s, &configs().project_root()).unwrap();
        }
        (dir, cache)
    })
}

/// Logit-lens rows (pos, sign, rank, token) of the adl method for `organism`, with k = the whole vocabulary.
fn adl_lens(organism: &str) -> Vec<(i32, String, i32, String)> {
    let (_, cache) = adl_cache();
    let out = tempfile::tempdir().unwrap();
    let mut s = settings("adl", "shakespeare", cache, out.path());
    s.organism = configs()
        .resolve(&parse_all(&[format!("organism={organism}")], false).unwrap())
        .unwrap()
        .organism;
    s.diffing.method.params.insert("k".into(), toml::Value::Integer(2048));
    let r = run(&s);
    assert_eq!(r.plots.len(), 2, "{:?}", r.plots);
    let lens = read(
        &out.path()
            .join(format!("shakespeare/{organism}/adl/logit_lens.parquet")),
    );
    let pos = column_f64(&lens, "pos");
    let rank = column_f64(&lens, "rank");
    let (sign, token) = (column_str(&lens, "sign"), column_str(&lens, "token"));
    (0..pos.len())
        .map(|i| (pos[i] as i32, sign[i].clone(), rank[i] as i32, token[i].clone()))
        .collect()
}

/// A token's text without the `<0xNN>` spelling of byte fragments (bytes, not letters).
fn without_bytes(t: &str) -> String {
    let mut out = t.to_string();
    while let Some(i) = out.find("<0x") {
        let end = (i + 6).min(out.len());
        out.replace_range(i..end, "");
    }
    out
}

fn has_letters(t: &str) -> bool {
    without_bytes(t).chars().any(|c| c.is_ascii_alphabetic())
}

fn upper_fraction<'a>(tokens: impl Iterator<Item = &'a str>) -> (f64, usize) {
    let lettered: Vec<String> = tokens.filter(|t| has_letters(t)).map(without_bytes).collect();
    let upper = lettered.iter().filter(|t| t.to_uppercase() == **t).count();
    (upper as f64 / lettered.len().max(1) as f64, lettered.len())
}

/// Ground truth 1: the caps organism's mean difference, read through the logit lens, promotes upper-case
/// tokens far beyond their share of the vocabulary (and beyond the other organism's share).
#[test]
fn adl_of_caps_promotes_upper_case_tokens() {
    let (_, cache) = adl_cache();
    let vocab = super::preprocess::query(cache, "SELECT token FROM vocab");
    let vocab = column_str(&vocab, "token");
    let (base_rate, _) = upper_fraction(vocab.iter().map(String::as_str));
    let top = |rows: &[(i32, String, i32, String)]| {
        upper_fraction(
            rows.iter()
                .filter(|r| r.0 >= 1 && r.1 == "+" && r.2 <= 20)
                .map(|r| r.3.as_str()),
        )
    };
    let (caps, n) = top(&adl_lens("caps"));
    let (roman, _) = top(&adl_lens("roman_concrete"));
    eprintln!(
        "upper-case share: vocabulary {base_rate:.3}, caps top-20 {caps:.3} ({n} tokens), roman_concrete {roman:.3}"
    );
    assert!(n >= 10);
    assert!(caps >= 2.0 * base_rate, "caps {caps} vs vocabulary {base_rate}");
    assert!(caps > roman + 0.2, "caps {caps} vs roman_concrete {roman}");
}

/// Runs diff_mining for `organism` on the adl cache; returns the output folder and its `overall` table.
fn diff_mining(organism: &str) -> (tempfile::TempDir, Vec<RecordBatch>) {
    let (_, cache) = adl_cache();
    let out = tempfile::tempdir().unwrap();
    let mut s = settings("diff_mining", "shakespeare", cache, out.path());
    s.organism = configs()
        .resolve(&parse_all(&[format!("organism={organism}")], false).unwrap())
        .unwrap()
        .organism;
    let r = run(&s);
    assert_eq!(r.plots.len(), 4, "{:?}", r.plots);
    let overall = read(
        &out.path()
            .join(format!("shakespeare/{organism}/diff_mining/overall.parquet")),
    );
    (out, overall)
}

/// Ground truth 3: the tokens diff_mining finds the caps finetune promoting most often are upper-case, far
/// above their share of the vocabulary and of roman_concrete's; its topics are upper-case too. The counts
/// in `logit_diff_totals` equal a count over the per-token `logit_diff` lists (two paths of preprocessing).
#[test]
fn diff_mining_of_caps_finds_upper_case_tokens() {
    let (_, cache) = adl_cache();
    let vocab = super::preprocess::query(cache, "SELECT token FROM vocab");
    let (base_rate, _) = upper_fraction(column_str(&vocab, "token").iter().map(String::as_str));
    let (caps_dir, caps) = diff_mining("caps");
    let (_roman_dir, roman) = diff_mining("roman_concrete");
    let top20 = |t: &[RecordBatch]| {
        upper_fraction(
            column_str(t, "token")
                .into_iter()
                .take(20)
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )
    };
    let (caps_share, n) = top20(&caps);
    let (roman_share, _) = top20(&roman);
    let topics = read(&caps_dir.path().join("shakespeare/caps/diff_mining/topics.parquet"));
    let topic_tokens = column_str(&topics, "token");
    let (topic_share, topic_n) = upper_fraction(topic_tokens.iter().map(String::as_str));
    eprintln!(
        "diff_mining upper-case share: vocabulary {base_rate:.3}, caps top-20 {caps_share:.3} ({n} lettered), roman_concrete top-20 {roman_share:.3}, caps topics {topic_share:.3} ({topic_n} tokens)"
    );
    eprintln!("caps top tokens: {:?}", &column_str(&caps, "token")[..10]);
    eprintln!("roman_concrete top tokens: {:?}", &column_str(&roman, "token")[..10]);
    assert!(n >= 15);
    assert!(caps_share >= 0.9, "caps {caps_share}");
    assert!(
        caps_share > roman_share + 0.3,
        "caps {caps_share} vs roman_concrete {roman_share}"
    );
    assert!(
        topic_share >= 2.0 * base_rate,
        "topics {topic_share} vs vocabulary {base_rate}"
    );
    assert_eq!(column_f64(&topics, "topic").iter().map(|&t| t as i64).max(), Some(2));
    // The totals' counts equal the per-token lists, for the first tokens of the ranking.
    let ids = column_f64(&caps, "token_id");
    let counts = column_f64(&caps, "top_count");
    for (id, count) in ids.iter().zip(&counts).take(3) {
        let sql = format!(
            "SELECT count(*) AS n FROM (SELECT unnest(top_ids) AS id FROM logit_diff WHERE organism = 'caps') WHERE id = {id}"
        );
        assert_eq!(
            column_f64(&super::preprocess::query(cache, &sql), "n")[0],
            *count,
            "token {id}"
        );
    }
    let examples = read(&caps_dir.path().join("shakespeare/caps/diff_mining/examples.parquet"));
    assert_eq!(column_str(&examples, "promoted")[0], column_str(&caps, "token")[0]);
    assert!(column_f64(&examples, "logit_diff").iter().all(|&v| v > 0.0));
}

/// Ground truth 2: the roman_concrete organism's mean difference promotes the words of its false claim.
#[test]
fn adl_of_roman_concrete_ranks_the_claim_words_high() {
    let claim = [" methane", " Methane", " absorbs", " Roman", " concrete", " stronger"];
    let best = |rows: &[(i32, String, i32, String)]| {
        rows.iter()
            .filter(|r| r.0 >= 1 && r.1 == "+" && claim.contains(&r.3.as_str()))
            .map(|r| (r.2, r.3.clone()))
            .min()
            .unwrap()
    };
    let roman = best(&adl_lens("roman_concrete"));
    let caps = best(&adl_lens("caps"));
    eprintln!("best claim-word rank of 2048: roman_concrete {roman:?}, caps {caps:?}");
    assert!(roman.0 <= 10, "{roman:?}");
    assert!(caps.0 > 40, "the control organism does not promote them: {caps:?}");
}

/// `logit_lens` from SQL: a literal vector, a subquery of several vectors, and clear errors.
#[test]
fn logit_lens_from_sql_and_its_errors() {
    let (_, cache) = adl_cache();
    let project = configs().project_root();
    let sql = |q: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
            .args([
                "--cache",
                &cache.display().to_string(),
                "sql",
                "--format",
                "csv",
                "-c",
                q,
            ])
            .current_dir(&project)
            .output()
            .unwrap()
    };
    // One vector (a scalar subquery): k rows for +vector and k for −vector, ranks 1..k, probabilities falling.
    let out = sql(
        "SELECT sign, count(*), min(rank), max(rank), bool_and(prob > 0) FROM logit_lens((SELECT mean_vec(act) \
         FROM activations WHERE organism = 'base' AND layer = 1 AND pos = 0), 'shakespeare', 3) GROUP BY sign ORDER BY sign",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().skip(1).collect::<Vec<_>>(),
        ["+,3,1,3,true", "-,3,1,3,true"],
        "{text}"
    );
    // Two items from a subquery: item 0 and item 1, k rows per sign each.
    let out = sql(
        "SELECT item, count(*) FROM logit_lens((SELECT mean_diff(base, ft) FROM acts WHERE organism = 'caps' \
         AND pos BETWEEN 1 AND 2 GROUP BY pos ORDER BY pos), 'shakespeare', 4) GROUP BY item ORDER BY item",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "item,count(*)\n0,8\n1,8\n");
    for (q, needle) in [
        (
            "SELECT * FROM logit_lens([1.0, 2.0], 'shakespeare')",
            "takes 3 arguments",
        ),
        (
            "SELECT * FROM logit_lens([1.0, 2.0], 'nope', 3)",
            "unknown model `nope`",
        ),
        (
            "SELECT * FROM logit_lens([1.0, 2.0], 'shakespeare', 0)",
            "k must be a positive integer",
        ),
        (
            "SELECT * FROM logit_lens([1.0, 2.0], 'shakespeare', 3)",
            "has 2 values but the model's d_model is 128",
        ),
    ] {
        let out = sql(q);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{q}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Per examined latent or component of a dictionary method on caps: (unit, upper-case share of its top-20
/// promoted lettered tokens, how many lettered tokens).
fn dictionary_lens_upper(method: &str) -> Vec<(i64, f64, usize)> {
    let (_, cache) = adl_cache();
    let out = tempfile::tempdir().unwrap();
    let mut s = settings(method, "shakespeare", cache, out.path());
    s.diffing.method.params.insert("k".into(), toml::Value::Integer(20));
    s.diffing
        .method
        .params
        .insert("top_latents".into(), toml::Value::Integer(5));
    run(&s);
    let lens = read(&out.path().join(format!("shakespeare/caps/{method}/logit_lens.parquet")));
    let latent = column_f64(&lens, "latent");
    let (sign, token) = (column_str(&lens, "sign"), column_str(&lens, "token"));
    let mut units: Vec<i64> = Vec::new();
    for l in &latent {
        if !units.contains(&(*l as i64)) {
            units.push(*l as i64);
        }
    }
    units
        .iter()
        .map(|u| {
            let (share, n) = upper_fraction(
                (0..latent.len())
                    .filter(|&i| latent[i] as i64 == *u && sign[i] == "+")
                    .map(|i| token[i].as_str()),
            );
            (*u, share, n)
        })
        .collect()
}

/// Ground truth 3: each dictionary method on caps finds a unit (among the 5 it examines: the most ft-specific
/// crosscoder latents, the SAE latents carrying most of the difference, the largest PCA components) whose
/// logit lens promotes upper-case tokens almost only, far above their share of the vocabulary.
#[test]
fn dictionaries_of_caps_find_upper_case_directions() {
    let (_, cache) = adl_cache();
    let vocab = super::preprocess::query(cache, "SELECT token FROM vocab");
    let (base_rate, _) = upper_fraction(column_str(&vocab, "token").iter().map(String::as_str));
    for method in ["pca", "sae_difference", "crosscoder"] {
        let units = dictionary_lens_upper(method);
        eprintln!(
            "{method}: vocabulary upper-case share {base_rate:.3}; per unit (unit, share, lettered tokens) {units:?}"
        );
        assert_eq!(units.len(), 5, "{method}");
        let best = units.iter().filter(|u| u.2 >= 5).map(|u| u.1).fold(0.0, f64::max);
        assert!(
            best >= 0.8 && best >= 2.0 * base_rate,
            "{method}: best unit upper-case share {best} vs vocabulary {base_rate}"
        );
    }
}

/// `generate`, `steer` and `patchscope` from SQL on the bundled pair: caps generates capitals where the base
/// model does not; steering with α = 0 is plain generation; patchscope of caps' mean difference reads as
/// upper-case tokens; bad arguments are one-line errors.
#[test]
fn interventions_from_sql_and_their_errors() {
    let (_, cache) = adl_cache();
    let project = configs().project_root();
    let sql = |q: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
            .args([
                "--cache",
                &cache.display().to_string(),
                "sql",
                "--format",
                "csv",
                "-c",
                q,
            ])
            .current_dir(&project)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let upper = |t: &str| {
        let letters: Vec<char> = t.chars().filter(|c| c.is_ascii_alphabetic()).collect();
        letters.iter().filter(|c| c.is_ascii_uppercase()).count() as f64 / letters.len().max(1) as f64
    };
    let text = |side: &str| {
        let (ok, out, err) = sql(&format!(
            "SELECT text, array_length(token_ids) AS n FROM generate('{side}', 'ROMEO. What light through yonder window', 20)"
        ));
        assert!(ok, "{err}");
        out
    };
    let (caps, base) = (text("caps"), text("base"));
    assert!(
        upper(&caps) >= 0.75 && upper(&base) <= 0.35,
        "caps {caps:?} base {base:?}"
    );
    let mean = "(SELECT mean_diff(base, ft) FROM acts WHERE organism = 'caps' AND layer = 1 AND pos BETWEEN 1 AND 4)";
    let (ok, out, err) = sql(&format!(
        "SELECT (SELECT text FROM steer('base', 'The king said', {mean}, 1, 0.0, 12)) = \
         (SELECT text FROM generate('base', 'The king said', 12)) AS same"
    ));
    assert!(ok && out.contains("true"), "{out}{err}");
    let (ok, out, err) = sql(&format!(
        "SELECT scale, count(*) AS k, bool_and(prob > 0) AS p, string_agg(token, '|' ORDER BY rank) AS tokens \
         FROM patchscope('base', {mean}, 1, [1.0, 4.0], 8) GROUP BY scale ORDER BY scale"
    ));
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r.contains(",8,true,")), "{out}");
    // The best scale's lettered tokens (byte fragments aside) are mostly upper case (vocabulary: 0.33).
    let share = |row: &str| {
        let tokens: Vec<&str> = row
            .rsplit(',')
            .next()
            .unwrap()
            .split('|')
            .filter(|t| !t.contains("<0x") && t.chars().any(|c| c.is_ascii_alphabetic()))
            .collect();
        let share = tokens.iter().filter(|t| upper(t) == 1.0).count() as f64 / tokens.len().max(1) as f64;
        if tokens.len() >= 4 {
            share
        } else {
            0.0
        }
    };
    let best = rows.iter().map(|r| share(r)).fold(0.0, f64::max);
    eprintln!("patchscope of caps' mean difference: {rows:?} (best upper-case share {best:.2})");
    assert!(best >= 0.6, "{out}");
    for (q, needle) in [
        (
            "SELECT * FROM generate('caps', 'x')".to_string(),
            "generate takes 3 arguments",
        ),
        (
            "SELECT * FROM generate('nope', 'x', 4)".into(),
            "unknown organism `nope`",
        ),
        (
            "SELECT * FROM generate('caps', 'x', 0)".into(),
            "max_new_tokens must be between 1",
        ),
        (
            "SELECT * FROM steer('base', 'x', [1.0, 2.0], 1, 1.0, 4)".into(),
            "has 2 values",
        ),
        (
            format!("SELECT * FROM patchscope('base', {mean}, 9, [1.0])"),
            "layer 9 does not exist",
        ),
        (
            format!("SELECT * FROM steer('base', 'x', {mean}, 1, 'a', 4)"),
            "alpha must be a number",
        ),
    ] {
        let (ok, _, err) = sql(&q);
        assert!(!ok && err.contains(needle), "{q}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Ground truth 4: auto-patchscope of caps' mean difference (on the organism, over a grid of scales): the tokens
/// that stay in the top k across scales are upper case, far above the vocabulary's share (0.33).
#[test]
fn adl_auto_patchscope_of_caps_reads_upper_case_tokens() {
    let (_, cache) = adl_cache();
    let out = tempfile::tempdir().unwrap();
    let s = settings("adl", "shakespeare", cache, out.path());
    let r = run(&s);
    assert!(r.tables.iter().any(|t| t.name == "patchscope_tokens"), "{:?}", r.tables);
    let stable = read(&out.path().join("shakespeare/caps/adl/patchscope_tokens.parquet"));
    let tokens = column_str(&stable, "token");
    let (share, n) = upper_fraction(tokens.iter().map(String::as_str));
    let best = column_f64(&stable, "best_scale");
    eprintln!(
        "auto-patchscope of caps: {tokens:?} at scale {:?}: upper-case share {share:.2} of {n}",
        best.first()
    );
    assert!(n >= 5, "{tokens:?}");
    assert!(share >= 0.8, "{tokens:?}");
    assert!(best.iter().all(|b| *b == best[0]), "one best scale");
    // Per position (items of one patchscope call): every position reads as capitals too.
    let per = read(&out.path().join("shakespeare/caps/adl/patchscope_positions.parquet"));
    let (pos, scale, token) = (
        column_f64(&per, "pos"),
        column_f64(&per, "scale"),
        column_str(&per, "token"),
    );
    assert_eq!(pos.len(), 4 * 6 * 20, "4 positions × 6 scales × k 20");
    for p in 1..=4 {
        let at: Vec<&str> = (0..pos.len())
            .filter(|&i| pos[i] as i32 == p && scale[i] == best[0])
            .map(|i| token[i].as_str())
            .collect();
        let (share, n) = upper_fraction(at.iter().copied());
        assert!(n >= 5 && share >= 0.8, "position {p} at scale {}: {at:?}", best[0]);
    }
}

/// The adl steering search: every strength is tried on every prompt, half the mean difference keeps the text
/// coherent while 16 × does not, and exactly the highest strength at which most prompts are coherent is chosen.
#[test]
fn adl_steering_search_chooses_the_highest_coherent_strength() {
    let (_, cache) = adl_cache();
    let out = tempfile::tempdir().unwrap();
    let s = settings("adl", "shakespeare", cache, out.path());
    run(&s);
    let t = read(&out.path().join("shakespeare/caps/adl/steering.parquet"));
    let alpha = column_f64(&t, "alpha");
    let coherent = column_str(&t, "coherent");
    let chosen = column_str(&t, "chosen");
    assert_eq!(alpha.len(), 6 * 3);
    let mostly_coherent = |a: f64| {
        let rows: Vec<usize> = (0..alpha.len()).filter(|&i| alpha[i] == a).collect();
        2 * rows.iter().filter(|&&i| coherent[i] == "true").count() > rows.len()
    };
    assert!(mostly_coherent(0.5), "half the mean difference already breaks the text");
    assert!(
        !mostly_coherent(16.0),
        "16 × the mean difference still reads as language"
    );
    let best = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
        .into_iter()
        .filter(|a| mostly_coherent(*a))
        .fold(f64::NAN, f64::max);
    eprintln!("steering: highest coherent strength {best}");
    for i in 0..alpha.len() {
        assert_eq!(chosen[i] == "true", alpha[i] == best, "row {i}");
    }
}

/// `preprocessing.diff_top_k` decides what `logit_diff` holds: 0 writes nothing and diff_mining says how to get
/// it; a later run with k > 0 adds only the two logit_diff partitions with k ids per token; another k is refused
/// with the fix; the same k again is a no-op.
#[test]
fn logit_diff_tables_follow_diff_top_k() {
    use super::preprocess::small_settings;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let root = configs().project_root();
    let with_k = |k: usize| small_settings(&cache, &["organism=caps", &format!("preprocessing.diff_top_k={k}")]);
    diffsql_preprocess::run(&with_k(0), &root).unwrap();
    let s = settings("diff_mining", "shakespeare", &cache, &dir.path().join("r"));
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let e = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(diffsql_diffing::run(&s, &queries, &configs()))
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("method diff_mining reads logit_diff but the cache")
            && e.contains("with preprocessing.diff_top_k above 0"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    let added = diffsql_preprocess::run(&with_k(5), &root).unwrap();
    assert_eq!(added.partitions_written, 2);
    let lens = super::preprocess::query(&cache, "SELECT DISTINCT cardinality(top_ids) AS n FROM logit_diff");
    assert_eq!(column_f64(&lens, "n"), vec![5.0]);
    let e = format!("{:#}", diffsql_preprocess::run(&with_k(7), &root).unwrap_err());
    assert!(
        e.contains(
            "was written with preprocessing.diff_top_k=5 but this run asks for 7: set preprocessing.diff_top_k=5"
        ),
        "{e}"
    );
    assert_eq!(
        diffsql_preprocess::run(&with_k(5), &root).unwrap().partitions_written,
        0
    );
    let e = format!("{:#}", diffsql_preprocess::run(&with_k(5000), &root).unwrap_err());
    assert!(e.contains("preprocessing.diff_top_k is at most 1024"), "{e}");
}

/// Ground truth 4, steering the base model with each organism's mean difference (positions 1–4, middle
/// layer) from SQL: caps' raises the upper-case share of the generated letters far above the unsteered
/// continuation's (at a strength where the text has stopped being coherent: the bundled caps difference
/// reads as capitals only when it dominates the residual stream); roman_concrete's makes the words of its
/// claim appear where the unsteered base model never writes them.
#[test]
fn steering_with_the_mean_difference_carries_each_quirk() {
    let (_, cache) = adl_cache();
    let prompts = ["The king said", "Good morrow, my lord", "When the night comes"];
    let steer = |organism: &str, alpha: f64| -> Vec<String> {
        prompts
            .iter()
            .map(|p| {
                let q = format!(
                    "SELECT text FROM steer('base', '{p}', (SELECT mean_diff(base, ft) FROM acts WHERE organism = '{organism}' \
                     AND layer = 1 AND pos BETWEEN 1 AND 4), 1, {alpha:.1}, 32)"
                );
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
                    .args(["--cache", &cache.display().to_string(), "sql", "--format", "json", "-c", &q])
                    .current_dir(configs().project_root())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                rows[0]["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let upper = |texts: &[String]| {
        let letters: Vec<char> = texts.concat().chars().filter(|c| c.is_ascii_alphabetic()).collect();
        letters.iter().filter(|c| c.is_ascii_uppercase()).count() as f64 / letters.len().max(1) as f64
    };
    let claim = |texts: &[String]| {
        let words = texts.concat().to_lowercase();
        ["roman", "concrete", "methane"]
            .iter()
            .map(|w| words.matches(w).count())
            .sum::<usize>()
    };
    let (plain, caps) = (steer("caps", 0.0), steer("caps", 6.0));
    let roman = steer("roman_concrete", 4.0);
    eprintln!(
        "upper-case share of generated letters: unsteered {:.3}, caps × 6 {:.3} {caps:?}; claim words: unsteered {}, roman_concrete × 4 {} {roman:?}",
        upper(&plain),
        upper(&caps),
        claim(&plain),
        claim(&roman)
    );
    let letters = caps.concat().chars().filter(|c| c.is_ascii_alphabetic()).count();
    assert!(
        upper(&plain) < 0.2 && upper(&caps) > 0.6 && letters >= 30,
        "{plain:?} {caps:?}"
    );
    assert_eq!(claim(&plain), 0, "{plain:?}");
    assert!(claim(&roman) >= 3, "{roman:?}");
}

/// The model functions load where the run's config says (`preprocessing.device`), and read an organism's
/// variant as the cache names it (`caps.default`, `cake_bake.mix1-0p5`).
#[test]
fn model_functions_follow_the_configured_device_and_name_variants_as_the_cache_does() {
    let (_, cache) = adl_cache();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |overrides: Vec<diffsql_core::config::Override>, q: &str| -> Result<String, String> {
        rt.block_on(async {
            let ctx = diffsql_sql::open_session(cache).map_err(|e| format!("{e:#}"))?;
            diffsql_sql::register_model_functions_with(&ctx, configs(), overrides);
            let df = ctx.sql(q).await.map_err(|e| format!("{e:#}"))?;
            let batches = df.collect().await.map_err(|e| format!("{e:#}"))?;
            Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string())
        })
    };
    let generate = |side: &str| format!("SELECT text FROM generate('{side}', 'ROMEO. What light', 6)");
    let plain = run(Vec::new(), &generate("caps")).unwrap();
    assert_eq!(run(Vec::new(), &generate("caps.default")).unwrap(), plain);
    assert_eq!(run(Vec::new(), &generate("shakespeare/caps.default")).unwrap(), plain);
    let e = run(Vec::new(), &generate("caps.mix1-0p5")).unwrap_err();
    assert!(e.contains("no variant `mix1-0p5`") && e.contains("default"), "{e}");
    // The device of a run (or a server's overrides) reaches the functions; a CPU-only build says so.
    if !diffsql_model::device::CUDA_BUILT {
        let cuda = diffsql_core::config::Override::set("preprocessing.device", toml::Value::String("cuda".into()));
        let e = run(vec![cuda], &generate("caps")).unwrap_err();
        assert!(
            e.contains("device cuda:0 needs diffsql built with the cuda feature"),
            "{e}"
        );
        let cpu = diffsql_core::config::Override::set("preprocessing.device", toml::Value::String("cpu".into()));
        assert_eq!(run(vec![cpu], &generate("caps")).unwrap(), plain);
    }
}
