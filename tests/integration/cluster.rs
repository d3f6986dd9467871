//! Queries on a cluster of `diffsql worker`s on 127.0.0.1: the distributed plan really sends the scans to the
//! workers, the answers equal one process's (vectors bitwise, statistics within 1e-6), from disk and from an
//! S3 store; a worker that is down is an error naming it, and nothing partial is printed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use super::fixtures::caches;

/// A running worker, killed when dropped.
pub(super) struct Worker {
    child: Child,
    pub(super) address: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Starts `diffsql worker` on a free port of 127.0.0.1, with the S3 variables of `env`.
pub(super) fn start_worker(env: &[(&str, String)]) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["worker", "--listen", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("diffsql worker listening on http://")
        .unwrap_or_else(|| panic!("the worker did not start: {line:?}"))
        .to_string();
    Worker { child, address }
}

fn sql(cache: &str, workers: &[&Worker], env: &[(&str, String)], query: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffsql"));
    c.args(["sql", "--format", "csv", "--cache", cache, "-c", query])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("DIFFSQL_WORKERS");
    if !workers.is_empty() {
        let list: Vec<&str> = workers.iter().map(|w| w.address.as_str()).collect();
        c.args(["--workers", &list.join(",")]);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two CSV outputs equal cell by cell, numbers within `tolerance` (relative to 1 or the value).
pub(super) fn assert_close(a: &str, b: &str, tolerance: f64, what: &str) {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(la.len(), lb.len(), "{what}: row counts differ");
    for (ra, rb) in la.iter().zip(&lb) {
        let (ca, cb): (Vec<&str>, Vec<&str>) = (ra.split(',').collect(), rb.split(',').collect());
        assert_eq!(ca.len(), cb.len(), "{what}: {ra} vs {rb}");
        for (x, y) in ca.iter().zip(&cb) {
            let number = |s: &str| s.trim_matches(|c| matches!(c, '"' | '[' | ']' | ' ')).parse::<f64>();
            match (number(x), number(y)) {
                (Ok(x), Ok(y)) => assert!(
                    (x - y).abs() <= tolerance * x.abs().max(1.0),
                    "{what}: {x} vs {y} in {ra} / {rb}"
                ),
                _ => assert_eq!(x, y, "{what}: {ra} vs {rb}"),
            }
        }
    }
}

/// The dictionary functions (the fixture cache has one dictionary of each kind, on caps at layer 1).
const DICTIONARY_FUNCTIONS: &str = "SELECT seq_id, pos, pca_project(vec_sub(ft, base), 'pca_L1', 2), sae_encode(vec_sub(ft, base), 'sae_difference_L1'), crosscoder_encode(base, ft, 'crosscoder_L1') FROM acts WHERE organism = 'caps' AND layer = 1 ORDER BY seq_id, pos";

const STATISTICS: [&str; 4] = [
    "SELECT layer, normdiff(base, ft), count(*) FROM acts GROUP BY layer ORDER BY layer",
    "SELECT organism, layer, avg(cosine_sim(base, ft)), max(vec_norm(ft)), avg(diff_norm(base, ft)) FROM acts GROUP BY organism, layer ORDER BY organism, layer",
    "SELECT organism, sum(kl), count(*), max(pos) FROM tokens GROUP BY organism ORDER BY organism",
    "SELECT layer, count(*) FROM activations WHERE organism = 'caps' AND pos < 5 GROUP BY layer ORDER BY layer",
];

const VECTORS: &str =
    "SELECT organism, layer, dataset, seq_id, pos, base, ft FROM acts ORDER BY organism, layer, dataset, seq_id, pos";

pub(super) fn same_answers_on_workers(cache: &str, env: &[(&str, String)], workers: &[&Worker]) {
    for q in STATISTICS {
        let (one, many) = (ok(&sql(cache, &[], env, q)), ok(&sql(cache, workers, env, q)));
        assert!(one.lines().count() > 1, "{q}: {one}");
        assert_close(&one, &many, 1e-6, q);
    }
    let (one, many) = (
        ok(&sql(cache, &[], env, VECTORS)),
        ok(&sql(cache, workers, env, VECTORS)),
    );
    assert!(one == many, "vectors differ between one process and the workers");
}

#[test]
fn queries_on_two_and_three_workers_equal_one_process_and_the_scans_run_on_the_workers() {
    let cache = caches().f32.display().to_string();
    let (a, b, c) = (start_worker(&[]), start_worker(&[]), start_worker(&[]));
    let plan = ok(&sql(
        &cache,
        &[&a, &b],
        &[],
        &format!("EXPLAIN ANALYZE {}", STATISTICS[0]),
    ));
    assert!(
        plan.contains("DistributedExec") && plan.contains("tasks=2") && plan.contains("t1: VectorScanExec"),
        "the scan stage is not sent to two workers: {plan}"
    );
    let plan = ok(&sql(
        &cache,
        &[&a, &b],
        &[],
        &format!("EXPLAIN ANALYZE {DICTIONARY_FUNCTIONS}"),
    ));
    assert!(
        plan.contains("DistributedExec") && plan.contains("sae_encode"),
        "the dictionary functions do not run on the workers: {plan}"
    );
    let one = ok(&sql(&cache, &[], &[], DICTIONARY_FUNCTIONS));
    assert!(one.lines().count() > 100, "{one}");
    assert_close(
        &one,
        &ok(&sql(&cache, &[&a, &b], &[], DICTIONARY_FUNCTIONS)),
        1e-6,
        "dictionary functions",
    );
    same_answers_on_workers(&cache, &[], &[&a, &b]);
    same_answers_on_workers(&cache, &[], &[&a, &b, &c]);
}

/// Every result CSV under `dir`, by relative path.
fn result_csvs(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "csv") {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn every_method_on_two_workers_writes_what_one_process_writes() {
    // A cache of its own: the methods train dictionaries into it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache").display().to_string();
    ok(&Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["preprocess", "--multirun", "organism=caps,roman_concrete"])
        .args(super::preprocess::SMALL_ARGS)
        .arg(format!("cache_dir={cache}"))
        .output()
        .unwrap());
    let (a, b) = (start_worker(&[]), start_worker(&[]));
    let workers = format!("{},{}", a.address, b.address);
    for method in super::fixtures::methods() {
        let run = |name: &str, workers: Option<&str>| {
            let out = dir.path().join(format!("{name}-{method}"));
            let mut c = Command::new(env!("CARGO_BIN_EXE_diffsql"));
            c.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "run",
                    &format!("diffing/method={method}"),
                    "organism=caps",
                    "pipeline.mode=diffing",
                ])
                .args(super::preprocess::SMALL_ARGS)
                .arg(format!("cache_dir={cache}"))
                .arg(format!("results_dir={}", out.display()))
                .env_remove("DIFFSQL_WORKERS");
            if matches!(method.as_str(), "sae_difference" | "crosscoder") {
                c.arg("diffing.method.train.batch_size=64");
            }
            if let Some(w) = workers {
                c.args(["--workers", w]);
            }
            ok(&c.output().unwrap());
            result_csvs(&out)
        };
        let (one, many) = (run("one", None), run("workers", Some(&workers)));
        assert!(!one.is_empty(), "{method} wrote no CSV");
        assert_eq!(
            one.keys().collect::<Vec<_>>(),
            many.keys().collect::<Vec<_>>(),
            "{method}"
        );
        for (name, text) in &one {
            assert_close(text, &many[name], 1e-6, &format!("{method}/{name}"));
        }
    }
}

#[test]
fn a_worker_that_is_down_is_an_error_naming_it_and_nothing_partial_is_printed() {
    let cache = caches().f32.display().to_string();
    let alive = start_worker(&[]);
    let mut dead = start_worker(&[]);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let o = sql(&cache, &[&alive, &dead], &[], VECTORS);
    failed_naming(&o, &dead.address);
}

/// A query that failed with one line of error containing `says`, and printed no rows.
fn failed_naming(o: &Output, says: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the query succeeded: {e}");
    assert!(e.contains(says), "the error does not say {says:?}: {e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        o.stdout.is_empty(),
        "partial results: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_worker_that_dies_mid_query_is_named_and_nothing_partial_is_printed() {
    let cache = caches().f32.display().to_string();
    let alive = start_worker(&[]);
    // This worker aborts (as under kill -9) after its scans produced 3 batches.
    let dying = start_worker(&[(diffsql_sql::tables::scan::CRASH_AFTER_SCAN_BATCHES_VAR, "3".to_string())]);
    let o = sql(&cache, &[&alive, &dying], &[], VECTORS);
    failed_naming(&o, &format!("worker http://{} stopped during the query", dying.address));
}

#[test]
fn a_bad_worker_list_is_a_one_line_error() {
    let cache = caches().f32.display().to_string();
    for (list, says) in [
        ("localhost", "needs a host and a port"),
        ("http://[::1", "is not host:port"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_diffsql"))
            .args(["sql", "--cache", &cache, "--workers", list, "-c", "SELECT 1"])
            .output()
            .unwrap();
        failed_naming(&o, says);
    }
    assert!(Path::new(&cache).exists());
}
