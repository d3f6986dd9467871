//! Caches on an S3-compatible object store, against a real S3 server on 127.0.0.1 (moto's, started by
//! `tools/s3_server.py`; `.ci/run` installs it): preprocessing into the store gives every method and query
//! the results it gives on disk, a killed writer leaves nothing visible and its rerun equals a clean run,
//! damage is found and refused, and a missing bucket, bad credentials or an unreachable store are one-line
//! errors naming the URL and what to set. Everything runs the `diffsql` binary, as a user would.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use diffsql_core::cache::object::CRASH_AFTER_UPLOADS_VAR;

// Small preprocessing of the bundled pair (both organisms share these settings, so `acts` pairs them).
use super::preprocess::SMALL_ARGS as SMALL;

/// A running S3 server, stopped when its standard input closes (with the test process).
struct S3Server {
    endpoint: String,
    _child: Mutex<Child>,
}

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts an S3 server with bucket `diffsql`; `auth` makes it check credentials after creating the bucket.
fn start_server(auth: bool) -> S3Server {
    let mut command = Command::new("python3");
    command
        .arg(project().join("tools/s3_server.py"))
        .arg("diffsql")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if auth {
        // moto checks credentials once this many requests (the bucket's creation) have passed.
        command.env("INITIAL_NO_AUTH_ACTION_COUNT", "1");
    }
    let mut child = command
        .spawn()
        .expect("python3 runs tools/s3_server.py: pip install \"moto[server]\" (.ci/run does)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("http://"),
        "tools/s3_server.py did not start (is moto installed? pip install \"moto[server]\"): {line:?}"
    );
    S3Server {
        endpoint: line.trim().to_string(),
        _child: Mutex::new(child),
    }
}

fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| start_server(false))
}

/// A fresh cache URL in the shared bucket.
fn fresh_url(name: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("s3://diffsql/{name}-{}-{n}", std::process::id())
}

/// `diffsql` with the store's variables, its spool under `spool`, run in the project.
fn diffsql(endpoint: &str, spool: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffsql"));
    c.current_dir(project())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("DIFFSQL_SPOOL", spool)
        .env_remove("DIFFSQL_CACHE")
        .env_remove(CRASH_AFTER_UPLOADS_VAR);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn succeed(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{:?} failed: {}", c, stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Dictionaries small enough for the small cache (for the methods that train one).
const SMALL_TRAINING: [&str; 1] = ["diffing.method.train.batch_size=64"];

fn preprocess(endpoint: &str, spool: &Path, cache: &str) {
    succeed(
        diffsql(endpoint, spool)
            .args(["preprocess", "--multirun", "organism=caps,roman_concrete"])
            .args(SMALL)
            .arg(format!("cache_dir={cache}")),
    );
}

/// Every result file under `dir` (relative path → bytes), without the run summaries (they hold timings).
fn result_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "csv" || x == "parquet") {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

const VECTORS: &str =
    "SELECT organism, layer, dataset, seq_id, pos, base, ft FROM acts ORDER BY organism, layer, dataset, seq_id, pos";

#[test]
fn every_method_and_query_gives_from_the_store_what_it_gives_from_disk() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let disk = dir.path().join("disk").display().to_string();
    let url = fresh_url("methods");
    preprocess(&s3.endpoint, &spool, &url);
    preprocess(&s3.endpoint, &spool, &disk);
    // Nothing of the store's cache stays in the spool once its partitions are uploaded.
    let spooled: Vec<_> = walk(&spool).into_iter().filter(|p| p.is_file()).collect();
    assert!(
        spooled.iter().all(|p| p.extension().is_some_and(|x| x == "lock")),
        "{spooled:?}"
    );
    // Vectors bitwise (CSV prints every float so that it reads back to the same bits).
    let vectors = |cache: &str| {
        succeed(diffsql(&s3.endpoint, &spool).args(["sql", "--format", "csv", "--cache", cache, "-c", VECTORS]))
    };
    let (from_store, from_disk) = (vectors(&url), vectors(&disk));
    assert!(from_store.lines().count() > 1000, "{}", from_store.lines().count());
    assert!(from_store == from_disk, "acts differs between the store and the disk");
    for method in super::fixtures::methods() {
        let results = |cache: &str, name: &str| {
            let out = dir.path().join(format!("results-{name}-{method}"));
            succeed(
                diffsql(&s3.endpoint, &spool)
                    .args(["run", &format!("diffing/method={method}"), "organism=caps"])
                    .args(SMALL)
                    .args(if method.ends_with("difference") || method == "crosscoder" {
                        &SMALL_TRAINING[..]
                    } else {
                        &[]
                    })
                    .arg(format!("cache_dir={cache}"))
                    .arg(format!("results_dir={}", out.display())),
            );
            result_files(&out)
        };
        let (a, b) = (results(&url, "store"), results(&disk, "disk"));
        assert!(!a.is_empty(), "{method} wrote no results");
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{method}: other result files"
        );
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{method}: {name} differs between the store and the disk"
            );
        }
    }
    // `check` reads every object of the store's cache.
    let o = diffsql(&s3.endpoint, &spool)
        .args(["check", "--cache", &url])
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success() && report.contains(": 0 damaged"), "{report}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The objects under a cache URL, with boto3 (a client that is not diffsql's).
fn objects(endpoint: &str, url: &str) -> Vec<String> {
    let (bucket, prefix) = url.trim_start_matches("s3://").split_once('/').unwrap();
    let script = format!(
        "import boto3\nc = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         for page in c.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}/'):\n    \
         for o in page.get('Contents', []): print(o['Key'][len('{prefix}/'):])\n"
    );
    let o = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut keys: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    keys.sort();
    keys
}

/// Flips 16 bytes in the middle of an object, with boto3.
fn flip_object(endpoint: &str, url: &str, key: &str) {
    let (bucket, prefix) = url.trim_start_matches("s3://").split_once('/').unwrap();
    boto3(
        endpoint,
        &format!(
            "k = '{prefix}/{key}'\nb = bytearray(c.get_object(Bucket='{bucket}', Key=k)['Body'].read())\nm = len(b) // 2\n\
             b[m:m+16] = bytes(x ^ 0x5a for x in b[m:m+16])\nc.put_object(Bucket='{bucket}', Key=k, Body=bytes(b))"
        ),
    );
}

#[test]
fn a_flipped_byte_in_an_object_is_found_by_check_refused_by_queries_and_repaired() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let url = fresh_url("damage");
    preprocess(&s3.endpoint, &spool, &url);
    let sql = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer";
    let query = || {
        diffsql(&s3.endpoint, &spool)
            .args(["sql", "--format", "csv", "--cache", &url, "-c", sql])
            .output()
            .unwrap()
    };
    let good = query();
    assert!(good.status.success(), "{}", stderr(&good));
    // The query kept verdicts on the objects it hashed; the flip makes a new version (a new ETag).
    assert!(objects(&s3.endpoint, &url)
        .iter()
        .any(|k| k.ends_with("_verified.json")));
    let victim = "activations/model=shakespeare/organism=caps/layer=1/part-00000.parquet";
    flip_object(&s3.endpoint, &url, victim);
    let refused = query();
    let e = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        e.contains("is damaged") && e.contains(&format!("{url}/{victim}")),
        "{e}"
    );
    assert!(e.contains("diffsql check --repair"), "{e}");
    let check = diffsql(&s3.endpoint, &spool)
        .args(["check", "--cache", &url])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("activations/model=shakespeare/organism=caps/layer=1"));
    succeed(diffsql(&s3.endpoint, &spool).args(["check", "--repair", "--cache", &url]));
    assert!(
        !objects(&s3.endpoint, &url)
            .iter()
            .any(|k| k.starts_with("activations/model=shakespeare/organism=caps/layer=1/")),
        "repair removes the damaged partition's objects"
    );
    // The rerun rebuilds what repair removed, and the numbers come back.
    preprocess(&s3.endpoint, &spool, &url);
    let again = query();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(again.stdout, good.stdout);
}

/// The normdiff and KL numbers of a cache, as CSV.
fn numbers(endpoint: &str, spool: &Path, cache: &str) -> String {
    let sql = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer; \
               SELECT organism, sum(kl), count(*) FROM tokens GROUP BY organism ORDER BY organism";
    succeed(diffsql(endpoint, spool).args(["sql", "--format", "csv", "--cache", cache, "-c", sql]))
}

#[test]
fn a_writer_killed_at_random_points_leaves_nothing_visible_and_the_rerun_equals_a_clean_run() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let url = fresh_url("killed");
    let clean = fresh_url("clean");
    let run = |cache: &str| {
        let mut c = diffsql(&s3.endpoint, &spool);
        c.args(["preprocess", "organism=caps"])
            .args(SMALL)
            .arg(format!("cache_dir={cache}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let started = Instant::now();
    assert!(run(&clean).status().unwrap().success());
    let clean_time = started.elapsed();
    // Aborted after its third upload: data objects of a partition are in the store, its manifest is not.
    let crashed = run(&url).env(CRASH_AFTER_UPLOADS_VAR, "3").status().unwrap();
    assert!(!crashed.success());
    let keys = objects(&s3.endpoint, &url);
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    let manifests = keys.iter().filter(|k| k.ends_with("_manifest.json")).count();
    let data_dirs: std::collections::BTreeSet<&str> = keys
        .iter()
        .filter(|k| k.ends_with(".parquet"))
        .map(|k| k.rsplit_once('/').unwrap().0)
        .collect();
    assert!(
        manifests < data_dirs.len(),
        "a partition's data is there without its manifest: {keys:?}"
    );
    // kill -9 at random moments of the run (the seed is printed so a failure can be replayed).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("kill -9 schedule seed {seed}");
    let mut state = seed | 1;
    for _ in 0..3 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = clean_time.mul_f64((state % 1000) as f64 / 1000.0);
        let mut child = run(&url).spawn().unwrap();
        std::thread::sleep(at.max(Duration::from_millis(50)));
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
    }
    // Whatever the kills left: no partition is visible without all its data, and the rerun completes.
    assert!(run(&url).status().unwrap().success());
    assert_eq!(
        numbers(&s3.endpoint, &spool, &url),
        numbers(&s3.endpoint, &spool, &clean)
    );
    let (a, b) = (objects(&s3.endpoint, &url), objects(&s3.endpoint, &clean));
    let data = |keys: &[String]| -> Vec<String> {
        keys.iter()
            .filter(|k| !k.starts_with(".locks/") && !k.ends_with("_verified.json"))
            .cloned()
            .collect()
    };
    assert_eq!(data(&a), data(&b), "the same objects as a clean run");
    assert!(
        !a.iter().any(|k| k.starts_with(".locks/")),
        "no lock object is left: {a:?}"
    );
    // And a further run has nothing to do.
    let o = run(&url).stderr(Stdio::piped()).output().unwrap();
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
}

/// Runs a boto3 snippet against the server (`c` is the client).
fn boto3(endpoint: &str, code: &str) {
    let script = format!(
        "import boto3, json\nc = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{code}\n"
    );
    let o = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_writer_waits_for_another_hosts_lock_object_naming_the_holder_and_goes_on_when_it_goes() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_url("locked");
    // The lock object another host's writer holds while it writes caps's tokens.
    let (bucket, prefix) = url.trim_start_matches("s3://").split_once('/').unwrap();
    let key = format!("{prefix}/.locks/tokens,model=shakespeare,organism=caps.lock");
    boto3(
        &s3.endpoint,
        &format!(
            "c.put_object(Bucket='{bucket}', Key='{key}', Body=json.dumps(dict(machine='another-machine', host='gpu-7', pid=4242, since_unix=0)).encode())"
        ),
    );
    let mut child = diffsql(&s3.endpoint, &dir.path().join("spool"))
        .args(["preprocess", "organism=caps"])
        .args(SMALL)
        .arg(format!("cache_dir={url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("waiting for"))
        .expect("the writer says it waits");
    assert!(
        waiting.contains("process 4242 on host gpu-7") && waiting.contains(&format!("{url}/.locks/")),
        "{waiting}"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "it waits while the lock is held");
    boto3(
        &s3.endpoint,
        &format!("c.delete_object(Bucket='{bucket}', Key='{key}')"),
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    assert!(objects(&s3.endpoint, &url)
        .iter()
        .any(|k| k == "tokens/model=shakespeare/organism=caps/_manifest.json"));
}

#[test]
fn a_missing_bucket_bad_credentials_or_an_unreachable_store_are_one_line_errors() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let one_line = |o: &Output| {
        let e = stderr(o);
        assert!(!o.status.success());
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        e
    };
    let check = |endpoint: &str, url: &str| {
        diffsql(endpoint, &spool)
            .args(["check", "--cache", url])
            .output()
            .unwrap()
    };
    let e = one_line(&check(&s3.endpoint, "s3://no-such-bucket/c"));
    assert!(
        e.contains("s3://no-such-bucket/c") && e.contains("bucket does not exist"),
        "{e}"
    );
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let e = one_line(&check("http://127.0.0.1:9", "s3://diffsql/c"));
    assert!(e.contains("s3://diffsql/c") && e.contains("AWS_ENDPOINT_URL"), "{e}");
    let guarded = start_server(true);
    let e = one_line(&check(&guarded.endpoint, "s3://diffsql/c"));
    assert!(
        e.contains("s3://diffsql/c") && e.contains("AWS_ACCESS_KEY_ID") && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    // Preprocessing stops on the store before any model is loaded.
    let o = diffsql(&s3.endpoint, &spool)
        .args(["preprocess", "organism=caps", "cache_dir=s3://no-such-bucket/c"])
        .output()
        .unwrap();
    let e = one_line(&o);
    assert!(e.contains("bucket does not exist") && !e.contains("panicked"), "{e}");
    // An s3:// cache with nothing under its prefix is reported as missing, as an empty directory is not.
    let o = diffsql(&s3.endpoint, &spool)
        .args(["sql", "--cache", "s3://diffsql/nothing-here", "-c", "SELECT 1"])
        .output()
        .unwrap();
    let e = one_line(&o);
    assert!(e.contains("s3://diffsql/nothing-here does not exist"), "{e}");
}

#[cfg(feature = "cluster")]
#[test]
fn queries_of_a_cache_on_the_store_run_on_workers_as_in_one_process() {
    use super::cluster::{same_answers_on_workers, start_worker};
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let url = fresh_url("cluster");
    preprocess(&s3.endpoint, &spool, &url);
    // The workers read the store with their own credentials (the plans name objects, not local files).
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("DIFFSQL_SPOOL", spool.display().to_string()),
    ];
    let (a, b) = (start_worker(&env), start_worker(&env));
    same_answers_on_workers(&url, &env, &[&a, &b]);
}

/// A plain HTTP GET (status line and body).
fn http_get(base: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

#[test]
fn the_dashboard_serves_a_cache_on_the_store() {
    let s3 = server();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let results = dir.path().join("results");
    let url = fresh_url("serve");
    succeed(
        diffsql(&s3.endpoint, &spool)
            .args(["run", "organism=caps", "diffing/method=kl"])
            .args(SMALL)
            .arg(format!("cache_dir={url}"))
            .arg(format!("results_dir={}", results.display())),
    );
    let mut server = diffsql(&s3.endpoint, &spool)
        .args(["serve", "--port", "0"])
        .arg(format!("cache_dir={url}"))
        .arg(format!("results_dir={}", results.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("listening on ")
                .map(|r| r.split_whitespace().next().unwrap().trim_end_matches('/').to_string())
        })
        .expect("the dashboard printed its address");
    let (status, page) = http_get(
        &base,
        "/tokens?model=shakespeare&organism=caps&dataset=shakespeare_pretrain&seq=0",
    );
    let (results_status, _) = http_get(&base, "/results/shakespeare/caps/kl");
    server.kill().ok();
    server.wait().ok();
    assert!(status.contains("200"), "{status}: {page}");
    assert!(results_status.contains("200"), "{results_status}");
    assert!(
        page.matches("class=\"tok").count() > 10,
        "the token browser shows the sequence's tokens: {page}"
    );
}
