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
