//! The cache's writers and readers: atomic partitions, locks, manifests, and the errors users meet.

use std::sync::Arc;

use diffsql_core::cache::synth::{self, SynthSpec};
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::{ActivationBatch, ActivationWriter, CacheLayout, PartitionKey, Table};
use diffsql_sql::tables::{VectorTable, VectorTableKind};
use diffsql_udfs::vector::ElementType;

use super::fixtures::{small_files, D_MODEL};

fn batch<'a>(seq: &'a [i64], pos: &'a [i32], tok: &'a [i32], vectors: &'a [f32]) -> ActivationBatch<'a> {
    ActivationBatch {
        dataset: "d",
        split: "train",
        seq_id: seq,
        pos,
        token_id: tok,
        vectors,
    }
}

#[test]
fn unfinished_partition_is_invisible_and_rewritten_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let key = PartitionKey::activations("m", "base", 0);
    let enc = VectorEncoding::new(ElementType::Float32, 2);
    let mut w = ActivationWriter::create(&layout, key.clone(), enc, small_files()).unwrap();
    let (seq, pos, tok) = (vec![0i64; 200], (0..200).collect::<Vec<i32>>(), vec![1i32; 200]);
    let vectors = vec![1.0f32; 400];
    w.push(&batch(&seq, &pos, &tok, &vectors)).unwrap();
    // The writer is dropped without finish(), as when a run is killed.
    drop(w);
    assert!(layout.partitions(Table::Activations).unwrap().is_empty());
    assert!(!layout.partition_dir(&key).exists());

    let mut w = ActivationWriter::create(&layout, key.clone(), enc, small_files()).unwrap();
    w.push(&batch(&seq, &pos, &tok, &vectors)).unwrap();
    let manifest = w.finish().unwrap();
    assert_eq!(manifest.rows, 200);
    assert_eq!(manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>(), vec![128, 72]);
    assert_eq!(layout.partitions(Table::Activations).unwrap().len(), 1);
    assert!(
        std::fs::read_dir(layout.staging_dir()).unwrap().next().is_none(),
        "staging left behind"
    );

    let err = ActivationWriter::create(&layout, key, enc, small_files())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("already complete"), "{err:#}");
}

#[test]
fn second_writer_of_a_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let key = PartitionKey::activations("m", "caps", 1);
    let enc = VectorEncoding::new(ElementType::BFloat16, 4);
    let _first = ActivationWriter::create(&layout, key.clone(), enc, small_files()).unwrap();
    let err = ActivationWriter::create(&layout, key.clone(), enc, small_files())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("is being written by process") && msg.contains("organism=caps/layer=1"),
        "{msg}"
    );
}

#[test]
fn a_lock_file_without_a_holder_does_not_stop_a_writer() {
    // What a killed writer leaves: the file, with its pid, but no lock (the kernel dropped it).
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let key = PartitionKey::activations("m", "caps", 1);
    std::fs::create_dir_all(layout.staging_dir()).unwrap();
    std::fs::write(layout.partition_lock_path(&key), "999999999").unwrap();
    std::fs::create_dir_all(layout.partition_staging_dir(&key)).unwrap();
    std::fs::write(layout.partition_staging_dir(&key).join("part-00000.parquet"), b"half").unwrap();
    let enc = VectorEncoding::new(ElementType::Float32, 4);
    let w = ActivationWriter::create(&layout, key.clone(), enc, small_files()).unwrap();
    w.finish().unwrap();
    assert!(layout.manifest(&key).unwrap().is_some());
    assert!(
        !layout.partition_lock_path(&key).exists(),
        "the lock file goes with its writer"
    );
}

#[test]
fn fingerprint_depends_on_tokens_not_on_vectors_or_batching() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let enc = VectorEncoding::new(ElementType::Float32, 1);
    let seq: Vec<i64> = (0..10).map(|i| i / 5).collect();
    let pos: Vec<i32> = (0..10).map(|i| i % 5).collect();
    let tok: Vec<i32> = (0..10).collect();
    let write = |organism: &str, vectors: &[f32], tok: &[i32], split_at: usize| {
        let key = PartitionKey::activations("m", organism, 0);
        let mut w = ActivationWriter::create(&layout, key, enc, small_files()).unwrap();
        w.push(&batch(
            &seq[..split_at],
            &pos[..split_at],
            &tok[..split_at],
            &vectors[..split_at],
        ))
        .unwrap();
        w.push(&batch(
            &seq[split_at..],
            &pos[split_at..],
            &tok[split_at..],
            &vectors[split_at..],
        ))
        .unwrap();
        w.finish().unwrap().token_fingerprint.unwrap()
    };
    let a = write("base", &[0.0; 10], &tok, 3);
    let b = write("caps", &[1.0; 10], &tok, 7);
    let mut other = tok.clone();
    other[9] = 99;
    let c = write("roman", &[1.0; 10], &other, 5);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn corrupt_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let spec = SynthSpec {
        tokens: 20,
        layers: vec![0],
        d_model: D_MODEL,
        options: small_files(),
        ..Default::default()
    };
    synth::write(&layout, &spec, |_| {}).unwrap();
    let manifest = layout
        .partition_dir(&PartitionKey::activations("synthetic", "caps", 0))
        .join("_manifest.json");
    std::fs::write(&manifest, "{ not json").unwrap();
    let err = VectorTable::open(layout, VectorTableKind::Acts).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("is corrupt") && msg.contains("organism=caps/layer=0"),
        "{msg}"
    );
}

#[test]
fn invalid_partition_names_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let enc = VectorEncoding::new(ElementType::Float32, 1);
    let err = ActivationWriter::create(
        &layout,
        PartitionKey::activations("google/gemma", "base", 0),
        enc,
        small_files(),
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("model name \"google/gemma\" cannot be a cache partition"),
        "{err:#}"
    );
    assert!(!layout.staging_dir().exists());
}

#[tokio::test]
async fn truncated_data_file_fails_the_query_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CacheLayout::new(dir.path());
    let spec = SynthSpec {
        tokens: 50,
        layers: vec![0],
        d_model: D_MODEL,
        options: small_files(),
        ..Default::default()
    };
    synth::write(&layout, &spec, |_| {}).unwrap();
    let file = layout
        .partition_dir(&PartitionKey::activations("synthetic", "base", 0))
        .join("part-00000.parquet");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = normdiff_of(layout).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("part-00000.parquet has") && msg.contains("truncated") && msg.contains("check --repair"),
        "{msg}"
    );
}

#[tokio::test]
async fn compressed_vectors_read_back_the_same_as_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut normdiffs = Vec::new();
    for (name, compression) in [("plain", "none"), ("zstd", "zstd(3)"), ("snappy", "snappy")] {
        let layout = CacheLayout::new(dir.path().join(name));
        let mut options = small_files();
        options.vector_compression = diffsql_core::cache::writer::parquet_compression(compression.parse().unwrap());
        let spec = SynthSpec {
            tokens: 200,
            layers: vec![2],
            d_model: 16,
            dtype: ElementType::BFloat16,
            options,
            ..Default::default()
        };
        synth::write(&layout, &spec, |_| {}).unwrap();
        let batches = normdiff_of(layout).await.unwrap();
        let value = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .value(0);
        normdiffs.push(value);
    }
    assert!((normdiffs[0] - 3.0).abs() < 0.03, "{normdiffs:?}");
    assert_eq!(normdiffs[0], normdiffs[1]);
    assert_eq!(normdiffs[0], normdiffs[2]);
}

/// Runs `SELECT normdiff(base, ft) FROM acts` over the cache at `layout`.
async fn normdiff_of(layout: CacheLayout) -> datafusion::error::Result<Vec<datafusion::arrow::array::RecordBatch>> {
    let ctx = datafusion::prelude::SessionContext::new();
    diffsql_udfs::register_all(&ctx);
    ctx.register_table(
        "acts",
        Arc::new(VectorTable::open(layout, VectorTableKind::Acts).unwrap()),
    )?;
    ctx.sql("SELECT normdiff(base, ft) FROM acts").await?.collect().await
}

#[test]
fn synthetic_noise_breaks_ties_but_keeps_the_shift() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        tokens: 512,
        layers: vec![2],
        d_model: 64,
        noise: 0.01,
        ..Default::default()
    };
    synth::write(&CacheLayout::new(dir.path()), &spec, |_| {}).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(async {
        let ctx = diffsql_sql::open_session(dir.path()).unwrap();
        let df = ctx
            .sql("SELECT avg(diff_norm(base, ft)), stddev(diff_norm(base, ft)) FROM acts")
            .await
            .unwrap();
        df.collect().await.unwrap()
    });
    let mean = batches[0].column(0).as_primitive::<Float64Type>().value(0);
    let std = batches[0].column(1).as_primitive::<Float64Type>().value(0);
    // ‖3·e + n‖ with n ~ N(0, 0.01² I₆₄): about sqrt(9 + 64·10⁻⁴) ≈ 3.0011, no longer the same for every token.
    assert!((mean - 3.0011).abs() < 0.01, "{mean}");
    assert!(std > 1e-4, "{std}");
}

/// The physical plan of `sql` over a small synthetic cache, as text.
fn physical_plan(sql: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        tokens: 256,
        d_model: 8,
        ..Default::default()
    };
    synth::write(&CacheLayout::new(dir.path()), &spec, |_| {}).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = diffsql_sql::open_session(dir.path()).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        text
    })
}

#[test]
fn filters_on_partition_columns_leave_no_filter_above_the_scan() {
    // A FilterExec would coalesce batches, copying every vector the query reads.
    let plan = physical_plan(
        "SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' AND layer IN (1, 2) GROUP BY layer",
    );
    assert!(
        plan.contains("VectorScanExec") && !plan.contains("FilterExec"),
        "{plan}"
    );
    let plan = physical_plan("SELECT count(*) FROM tokens WHERE organism = 'caps' AND model = 'synthetic'");
    assert!(!plan.contains("FilterExec"), "{plan}");
    // Filters on other columns, mixed ones and volatile ones are still applied row by row.
    for sql in [
        "SELECT count(*) FROM acts WHERE pos > 3",
        "SELECT count(*) FROM acts WHERE organism = 'caps' OR diff_norm(base, ft) > 3.5",
        "SELECT count(*) FROM acts WHERE layer + random() < 2",
    ] {
        assert!(physical_plan(sql).contains("FilterExec"), "{sql}");
    }
}
