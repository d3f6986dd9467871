//! The README's pyarrow + numpy snippet, run against a synthetic cache: the cache stays readable from Python.

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
    for (layer, (a, b)) in ours.iter().zip(&numpy).enumerate() {
        assert!(*a > 0.1, "layer {layer}: organism and base differ");
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "layer {layer}: diffsql {a} vs numpy {b}"
        );
    }
}
