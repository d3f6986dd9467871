//! Python's doors: the README's pyarrow + numpy snippet, run against a synthetic cache (the cache stays readable
//! without diffsql), and table functions called as datafusion-python calls them (`diffsql_sql::foreign`).

use std::process::Command;

use super::fixtures::caches;

/// The first ```python block after the marker line in README.md.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- tested: python-snippet -->").expect("README marker");
    let rest = &readme[start..];
    let code = &rest[rest.find("```python\n").unwrap() + 10..];
    code[..code.find("```").unwrap()].to_string()
}

#[test]
fn readme_python_snippet_loads_vectors() {
    let has_pyarrow = Command::new("python3")
        .args(["-c", "import pyarrow, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_pyarrow,
        "this test needs python3 with pyarrow and numpy: pip install pyarrow numpy (.ci/run does)"
    );
    let snippet = readme_snippet();
    let program = format!(
        "{snippet}\nprint(base.shape, base.dtype)\nprint(round(float(np.linalg.norm(ft - base, axis=1).mean()), 4))\n"
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .env("CACHE", &caches().bf16)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("(300, 8) float32"));
    // caps at layer 2 moves one coordinate by 3; bfloat16 keeps that within 1%.
    let norm: f64 = lines.next().unwrap().parse().unwrap();
    assert!((norm - 3.0).abs() < 0.03, "{norm}");
}

/// The statistic `normdiff` computes, recomputed by numpy from the Parquet files of a preprocessed cache.
#[test]
fn normdiff_of_a_preprocessed_cache_equals_numpy() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    let p = super::preprocess::preprocessed();
    let program = format!(
        "{}\nfor layer in range(4):\n    print(float(np.linalg.norm(vectors('caps', layer) - vectors('base', layer), axis=1).mean()))\n",
        readme_snippet().replace("base, ft = vectors(\"base\", 2), vectors(\"caps\", 2)", "")
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .env("CACHE", &p.cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let numpy: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let batches = super::preprocess::query(
        &p.cache,
        "SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer ORDER BY layer",
    );
    let ours = batches[0].column(1).as_primitive::<Float64Type>().values().to_vec();
    assert_eq!(ours.len(), 4);
    assert_eq!(numpy.len(), ours.len(), "numpy printed one value per layer");
    for (layer, (a, b)) in ours.iter().zip(&numpy).enumerate() {
        assert!(*a > 0.1, "layer {layer}: organism and base differ");
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "layer {layer}: diffsql {a} vs numpy {b}"
        );
    }
}

/// The rows of a query in `ctx`.
async fn rows(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Vec<datafusion::arrow::array::RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn int_literal(n: i64) -> diffsql_sql::foreign::Argument {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    let batch = RecordBatch::try_from_iter([("value", std::sync::Arc::new(Int64Array::from(vec![n])) as _)]).unwrap();
    diffsql_sql::foreign::Argument::Literal(batch.schema(), vec![batch])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_function_called_from_another_session_equals_sql() {
    use diffsql_sql::foreign::{self, Argument};
    let ctx = super::fixtures::session();
    let triplets = "SELECT struct(seq_id, pos % 7, CAST(pos AS DOUBLE) + 1.0) FROM tokens \
                    WHERE organism = 'base' ORDER BY seq_id DESC, pos DESC";
    let want = rows(
        &ctx,
        &format!("SELECT * FROM nmf(({triplets}), 2, 60) ORDER BY topic, rank"),
    )
    .await;
    // The subquery's rows as the caller hands them over (run elsewhere), the literals as one-row columns.
    let arg_rows = rows(&ctx, triplets).await;
    let arguments = vec![
        Argument::Rows(arg_rows[0].schema(), arg_rows),
        int_literal(2),
        int_literal(60),
    ];
    let provider = foreign::call(&ctx.state(), "nmf", arguments, tokio::runtime::Handle::current()).unwrap();
    // Scanned from a session that has none of diffsql's tables or functions.
    let other = datafusion::prelude::SessionContext::new();
    other.register_table("topics", provider).unwrap();
    let got = rows(&other, "SELECT * FROM topics ORDER BY topic, rank").await;
    let text = |b: &[datafusion::arrow::array::RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(b)
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&got), text(&want));
    assert!(text(&got).lines().count() > 6, "{}", text(&got));

    assert!(foreign::table_function_names(&ctx.state()).contains(&"nmf".to_string()));
    assert!(!foreign::table_function_names(&ctx.state()).contains(&"generate_series".to_string()));
    let unknown = foreign::call(&ctx.state(), "nosuch", Vec::new(), tokio::runtime::Handle::current());
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("diffsql has no table function nosuch"));
    let misuse = foreign::call(
        &ctx.state(),
        "nmf",
        vec![int_literal(1), int_literal(2)],
        tokio::runtime::Handle::current(),
    );
    assert!(misuse
        .unwrap_err()
        .to_string()
        .contains("nmf: the first argument must be a subquery"));
}
