//! Diffing methods as saved SQL, checked on the synthetic cache whose answers are known in closed form
//! (organism caps shifts coordinate L of every layer-L vector by L + 1; its per-token KL is 0.01·(pos mod 7)),
//! and on the bundled pair against statistics recomputed here from the `tokens` table.

use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use diffsql::config::{parse_all, Settings};
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

fn run(s: &Settings) -> diffsql::diffing::MethodResult {
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(diffsql::diffing::run(s, &queries))
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
