//! Trust in the cache: a damaged, incomplete, stray or missing file never gives a number; SQL cannot write
//! into the cache; bad sizes are errors that name the argument, never panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diffsql_core::cache::synth;
use diffsql_core::cache::CacheLayout;
use diffsql_udfs::vector::ElementType;

use super::fixtures::spec;
use super::preprocess::{configs, preprocessed, small_settings};

fn diffsql(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffsql"));
    c.arg("--cache").arg(cache).current_dir(configs().project_root());
    c.env_remove("DIFFSQL_CACHE");
    c
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `sql -c` in csv; returns (success, stdout, stderr).
fn sql(cache: &Path, query: &str, extra: &[&str]) -> (bool, String, String) {
    let o = diffsql(cache)
        .args(["sql", "--format", "csv"])
        .args(extra)
        .args(["-c", query])
        .output()
        .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (o.status.success(), stdout, stderr)
}

/// A fresh small synthetic float32 cache (activations and tokens) in its own directory.
fn synth_cache() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    synth::write(&CacheLayout::new(&cache), &spec(ElementType::Float32), |_| {}).unwrap();
    (dir, cache)
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files.remove(0)
}

fn flip_middle(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn flipped_bytes_in_activations_or_tokens_are_an_error_naming_the_file() {
    let (_dir, cache) = synth_cache();
    let card = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer";
    assert!(sql(&cache, card, &[]).0);
    let act = first_file(&cache.join("activations/model=m/organism=caps/layer=2"));
    flip_middle(&act);
    let (ok, stdout, stderr) = sql(&cache, card, &[]);
    assert!(!ok, "a damaged file gave numbers: {stdout}");
    assert!(
        stderr.contains(&act.display().to_string()) && stderr.contains("check --repair"),
        "{stderr}"
    );
    assert!(!stdout.contains("inf"), "{stdout}");
    let tokens = first_file(&cache.join("tokens/model=m/organism=caps"));
    flip_middle(&tokens);
    let (ok, _, stderr) = sql(&cache, "SELECT sum(kl) FROM tokens", &[]);
    assert!(
        !ok && stderr.contains("part-00000.parquet") && stderr.contains("damaged"),
        "{stderr}"
    );
    // `check` lists both, fails, and --repair removes them; the rest of the cache still answers.
    let o = diffsql(&cache).arg("check").output().unwrap();
    let (stdout, stderr) = out(&o);
    assert!(!o.status.success());
    assert!(stdout.contains("layer=2") && stdout.contains("tokens"), "{stdout}");
    assert!(stderr.contains("2 damaged"), "{stderr}");
    let o = diffsql(&cache).args(["check", "--repair"]).output().unwrap();
    assert!(o.status.success(), "{}", out(&o).1);
    assert!(!cache.join("activations/model=m/organism=caps/layer=2").exists());
    let o = diffsql(&cache).arg("check").output().unwrap();
    assert!(o.status.success(), "{}", out(&o).1);
    let (ok, stdout, stderr) = sql(&cache, "SELECT count(*) AS n FROM tokens WHERE organism = 'roman'", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("n\n{}\n", super::fixtures::TOKENS));
}

/// The files a query process checked and hashed, from its `--timing` line.
fn checked_and_hashed(cache: &Path, query: &str, extra: &[&str]) -> (usize, usize) {
    let mut args = vec!["--timing"];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = sql(cache, query, &args);
    assert!(ok, "{stderr}");
    let number = |after: &str| -> usize {
        let rest = &stderr[stderr.find(after).unwrap_or_else(|| panic!("no {after:?} in {stderr}")) + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (number("cache files checked "), number(", hashed "))
}

#[test]
fn a_second_process_hashes_no_unchanged_file_and_hashes_a_changed_one() {
    let (_dir, cache) = synth_cache();
    // Files younger than the racy window keep no verdict (they could change again within a clock tick).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let card = "SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer";
    // A query checks a base file once per organism beside it; the process hashes each file once.
    let (checked, hashed) = checked_and_hashed(&cache, card, &[]);
    assert!(
        hashed > 0 && hashed <= checked,
        "first process: checked {checked}, hashed {hashed}"
    );
    let partition = cache.join("activations/model=m/organism=caps/layer=1");
    assert!(partition.join("_verified.json").exists());
    assert_eq!(
        checked_and_hashed(&cache, card, &[]),
        (checked, 0),
        "an unchanged cache was hashed again"
    );
    // The same bytes under a new inode: that file alone is hashed again, and passes.
    let file = first_file(&partition);
    let copy = partition.join("copy.tmp");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(checked_and_hashed(&cache, card, &[]), (checked, 1));
    assert_eq!(checked_and_hashed(&cache, card, &[]), (checked, 0));
    // --rehash (and DIFFSQL_REHASH=1) ignores kept verdicts.
    assert_eq!(checked_and_hashed(&cache, card, &["--rehash"]), (checked, hashed));
    // A damaged copy of the same size renamed over the file, its mtime restored: refused.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (ok, stdout, stderr) = sql(&cache, card, &[]);
    assert!(!ok, "a damaged file passed on a kept verdict: {stdout}");
    assert!(
        stderr.contains("is damaged") && stderr.contains(&file.display().to_string()),
        "{stderr}"
    );
    // A corrupt verdict file is ignored: the damage is still found.
    std::fs::write(partition.join("_verified.json"), b"{").unwrap();
    assert!(!sql(&cache, card, &[]).0);
}

#[test]
fn a_truncated_file_stops_preprocessing_until_repaired_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    copy_dir(&preprocessed().cache, &cache);
    let root = configs().project_root();
    let settings = small_settings(&cache, &["organism=caps"]);
    let clean = diffsql_preprocess::run(&settings, &root).unwrap();
    assert!(clean.is_noop());
    let file = first_file(&cache.join("activations/model=shakespeare/organism=caps/layer=1"));
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = format!("{:#}", diffsql_preprocess::run(&settings, &root).unwrap_err());
    assert!(e.contains("truncated") && e.contains("check --repair"), "{e}");
    let o = diffsql(&cache).args(["check", "--repair"]).output().unwrap();
    assert!(o.status.success(), "{}", out(&o).1);
    assert!(out(&o).0.contains("removed"), "{}", out(&o).0);
    let rebuilt = diffsql_preprocess::run(&settings, &root).unwrap();
    assert_eq!(rebuilt.partitions_written, 1, "only the removed partition is rebuilt");
    let card = "SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer ORDER BY layer";
    assert_eq!(sql(&cache, card, &[]).1, sql(&preprocessed().cache, card, &[]).1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn every_table_reads_only_the_files_its_manifests_list() {
    let (_dir, cache) = synth_cache();
    let count = "SELECT count(*) AS n, sum(kl) AS kl FROM tokens WHERE organism = 'caps'";
    let (ok, before, stderr) = sql(&cache, count, &[]);
    assert!(ok, "{stderr}");
    let part = cache.join("tokens/model=m/organism=caps");
    let file = first_file(&part);
    std::fs::copy(&file, part.join("part-00000 (copy).parquet")).unwrap();
    std::fs::write(part.join("junk.parquet"), b"not parquet").unwrap();
    std::fs::write(
        cache.join("activations/model=m/organism=caps/layer=0/junk.parquet"),
        b"x",
    )
    .unwrap();
    let (ok, after, stderr) = sql(&cache, count, &[]);
    assert!(ok, "stray files broke the query: {stderr}");
    assert_eq!(before, after, "a stray copy was read");
    assert!(sql(&cache, "SELECT count(*) FROM acts", &[]).0);
    // Without its manifest a partition does not exist, for tokens as for activations and cache_info().
    std::fs::remove_file(part.join("_manifest.json")).unwrap();
    let (ok, stdout, stderr) = sql(&cache, "SELECT count(*) AS n FROM tokens WHERE organism = 'caps'", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "n\n0\n");
    let (_, listed, _) = sql(
        &cache,
        "SELECT count(*) AS n FROM cache_info() WHERE table_name = 'tokens' AND organism = 'caps'",
        &[],
    );
    assert_eq!(listed, "n\n0\n");
}

#[test]
fn a_missing_unreadable_or_empty_cache_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = sql(&dir.path().join("does/not/exist"), "SELECT count(*) FROM tokens", &[]);
    assert!(!ok && stdout.is_empty());
    assert!(
        stderr.contains("does not exist") && stderr.contains("--cache"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for table in ["tokens", "acts", "activations", "sequences"] {
        let (ok, _, stderr) = sql(&empty, &format!("SELECT count(*) FROM {table}"), &[]);
        assert!(
            !ok && stderr.contains("holds no") && stderr.contains("preprocess"),
            "{table}: {stderr}"
        );
    }
    // A query that touches no cache table still runs.
    assert!(sql(&empty, "SELECT 1", &[]).0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root reads anything; the check only means something for other users.
        if std::fs::read_dir(&locked).is_err() {
            let (ok, _, stderr) = sql(&locked, "SELECT 1", &[]);
            assert!(!ok && stderr.contains("cannot read the cache directory"), "{stderr}");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn sql_cannot_write_into_the_cache_and_read_only_refuses_the_file_system() {
    let (dir, cache) = synth_cache();
    let before = sql(&cache, "SELECT count(*) FROM tokens", &[]).1;
    let into_cache = format!(
        "COPY (SELECT * FROM tokens LIMIT 100) TO '{}/tokens/model=m/organism=caps/part-99999.parquet'",
        cache.display()
    );
    let (ok, _, stderr) = sql(&cache, &into_cache, &[]);
    assert!(!ok && stderr.contains("would write into"), "{stderr}");
    // Through a relative path with `..` too.
    let sneaky = format!(
        "COPY (SELECT 1 AS x) TO '{}/../c/tokens/x.parquet'",
        cache.join("activations").display()
    );
    let (ok, _, stderr) = sql(&cache, &sneaky, &[]);
    assert!(!ok && stderr.contains("would write into"), "{stderr}");
    let external = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}/tokens/'",
        cache.display()
    );
    assert!(!sql(&cache, &external, &[]).0);
    assert_eq!(sql(&cache, "SELECT count(*) FROM tokens", &[]).1, before);
    assert!(!cache.join("tokens/model=m/organism=caps/part-99999.parquet").exists());
    // The shell may COPY to a file of the user's choosing...
    let target = dir.path().join("out.parquet");
    let copy = format!("COPY (SELECT 1 AS x) TO '{}'", target.display());
    let (ok, _, stderr) = sql(&cache, &copy, &[]);
    assert!(ok, "{stderr}");
    assert!(target.exists());
    // ...a read-only session may not, nor define tables over files, nor insert.
    let elsewhere = dir.path().join("ro.parquet");
    let copy = format!("COPY (SELECT 1 AS x) TO '{}'", elsewhere.display());
    let (ok, _, stderr) = sql(&cache, &copy, &["--read-only"]);
    assert!(!ok && stderr.contains("read-only"), "{stderr}");
    assert!(!elsewhere.exists());
    let passwd = "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'";
    let (ok, _, stderr) = sql(&cache, passwd, &["--read-only"]);
    assert!(!ok && stderr.contains("read-only"), "{stderr}");
    let insert = "CREATE TABLE m AS SELECT 1 AS x; INSERT INTO m VALUES (2)";
    let (ok, _, stderr) = sql(&cache, insert, &["--read-only"]);
    assert!(!ok && stderr.contains("read-only"), "{stderr}");
    // Reading works as ever.
    let (ok, stdout, _) = sql(&cache, "SELECT count(*) AS n FROM tokens", &["--read-only"]);
    assert!(ok && stdout.starts_with("n\n"));
}

#[test]
fn synth_sizes_of_zero_are_errors_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--seq-len", "0"),
        ("--d-model", "0"),
        ("--tokens", "0"),
        ("--rows-per-file", "0"),
    ] {
        let o = diffsql(&dir.path().join("c"))
            .args(["synth", flag, value])
            .output()
            .unwrap();
        let (_, stderr) = out(&o);
        assert!(!o.status.success());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(!dir.path().join("c/activations").exists());
    }
}
