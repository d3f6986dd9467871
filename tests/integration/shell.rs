//! The `diffsql` binary driven as a user would: `sql -c`, `sql -f`, a piped shell session, saved queries.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::fixtures::caches;

fn diffsql(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffsql"));
    c.arg("--cache")
        .arg(cache)
        .arg("--queries")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries"));
    c.env_remove("DIFFSQL_CACHE").env_remove("DIFFSQL_QUERIES");
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Parses `--format csv` output of two numeric columns.
fn csv_pairs(stdout: &str) -> Vec<(f64, f64)> {
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// Float32 storage: values equal the closed form to 1e-6 relative.
fn assert_close(got: &[(f64, f64)], expect: &[(f64, f64)]) {
    assert_eq!(got.len(), expect.len(), "{got:?}");
    for (g, e) in got.iter().zip(expect) {
        assert!(
            g.0 == e.0 && (g.1 - e.1).abs() <= 1e-6 * e.1.abs(),
            "{got:?} vs {expect:?}"
        );
    }
}

#[test]
fn sql_c_prints_normdiff_per_layer() {
    let out = diffsql(&caches().f32)
        .args(["sql", "--format", "csv", "-c"])
        .arg("SELECT layer, normdiff(base, ft) FROM acts WHERE organism = 'caps' GROUP BY layer ORDER BY layer")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows = csv_pairs(&stdout);
    assert_eq!(rows.len(), 4, "{stdout}");
    for (layer, value) in rows {
        assert!((value - (layer + 1.0)).abs() < 1e-5, "layer {layer}: {value}");
    }
}

#[test]
fn table_output_abbreviates_long_vectors_and_json_keeps_them() {
    let out = diffsql(&caches().f32)
        .args([
            "sql",
            "-c",
            "SELECT vec_sub([1,2,3,4,5,6,7,8,9,10], [0,0,0,0,0,0,0,0,0,0.5]) AS v",
        ])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("| [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, … (10 values)] |"),
        "{stdout}"
    );
    let out = diffsql(&caches().f32)
        .args([
            "sql",
            "--format",
            "json",
            "-c",
            "SELECT layer, act FROM activations WHERE layer = 2 LIMIT 1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[0]["layer"], 2);
    assert_eq!(rows[0]["act"].as_array().unwrap().len(), 8);
}

#[test]
fn sql_f_runs_every_statement_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(
        &file,
        "-- two statements\nCREATE VIEW d AS SELECT layer, diff_norm(base, ft) AS n FROM acts WHERE organism = 'roman';\n\
         SELECT layer, avg(n) FROM d GROUP BY layer ORDER BY layer;\n",
    )
    .unwrap();
    let out = diffsql(&caches().f32)
        .args(["sql", "--format", "csv", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows = csv_pairs(&stdout[stdout.find("layer,").unwrap()..]);
    assert_eq!(
        rows.iter().map(|r| r.1.round()).collect::<Vec<_>>(),
        vec![2.0, 4.0, 6.0, 8.0]
    );
}

#[test]
fn bad_sql_is_one_line_on_stderr_and_a_failing_exit() {
    let out = diffsql(&caches().f32).args(["sql", "-c", "SELEC 1"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("Error: "), "{stderr}");

    let out = diffsql(&caches().f32)
        .args(["sql", "-c", "SELECT diff_norm([1.0], [1.0, 2.0])"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("diff_norm: vectors have different lengths: 1 and 2"),
        "{stderr}"
    );
}

#[test]
fn piped_session_handles_multiline_statements_commands_and_errors() {
    let input = "\\format csv\n\
                 SELECT layer,\n  normdiff(base, ft)\nFROM acts WHERE organism = 'caps'\nGROUP BY layer ORDER BY layer;\n\
                 SELECT nope FROM acts;\n\
                 \\d\n\
                 \\d acts\n\
                 \\run layer_normdiff\n\
                 \\bogus\n\
                 \\q\n\
                 SELECT 'not reached';\n";
    let out = with_stdin(diffsql(&caches().f32).arg("sql"), input);
    let (stdout, stderr) = text(&out);
    // Two failures (the bad column and the bad command) make the exit code non-zero, and the shell went on.
    assert!(!out.status.success());
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("Error: ")).count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(stderr.contains("unknown command \\bogus"), "{stderr}");
    let first = &stdout[stdout
        .find("layer,\"normdiff(acts.base,acts.ft)\"\n")
        .expect("csv header")..];
    let caps: Vec<(f64, f64)> = csv_pairs(&first[..first.find("activations").unwrap()]);
    assert_close(&caps, &[(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]);
    for table in ["activations", "acts", "sequences", "tokens"] {
        assert!(stdout.lines().any(|l| l == table), "\\d lacks {table}: {stdout}");
    }
    assert!(
        stdout.contains("ft        FixedSizeList(8 x Float32) not null"),
        "{stdout}"
    );
    // The saved query: every organism, so the mean over caps and roman is 1.5·(layer+1).
    let saved = &stdout[stdout.find("layer,normdiff\n").expect("saved query output")..];
    assert_close(&csv_pairs(saved), &[(0.0, 1.5), (1.0, 3.0), (2.0, 4.5), (3.0, 6.0)]);
    assert!(!stdout.contains("not reached"));
}

#[test]
fn meta_commands_work_in_c_and_f_as_in_the_shell() {
    let out = diffsql(&caches().f32).args(["sql", "-c", "\\d"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for table in ["activations", "acts", "sequences", "tokens", "vocab"] {
        assert!(stdout.lines().any(|l| l == table), "\\d lacks {table}: {stdout}");
    }
    // The fixture cache's trained dictionaries are listed too, with what they are.
    for dictionary in [
        "m/caps/crosscoder_L1  crosscoder at layer 1, 16 latents",
        "m/caps/pca_L1  pca at layer 1, 2 latents",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(dictionary)),
            "\\d lacks {dictionary}: {stdout}"
        );
    }
    let out = diffsql(&caches().f32)
        .args(["sql", "-c", "\\d acts", "-c", "\\format csv\nSELECT 1 AS one;"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("ft        FixedSizeList(8 x Float32) not null"),
        "{stdout}"
    );
    assert!(stdout.ends_with("one\n1\n"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.sql");
    std::fs::write(
        &file,
        "\\timing on\n\\format json\nSELECT 2 AS two;\n\\bogus\nSELECT 3;\n",
    )
    .unwrap();
    let out = diffsql(&caches().f32).arg("sql").arg("-f").arg(&file).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "an unknown command fails the file");
    assert!(stdout.contains("\"two\":2"), "{stdout}");
    assert!(
        stderr.contains("Time: ") && stderr.contains("unknown command \\bogus"),
        "{stderr}"
    );
    assert!(!stdout.contains('3'), "the file stops at its first error: {stdout}");
}

#[test]
fn piped_statements_split_outside_strings_only() {
    let input = "\\format csv\nSELECT 'first;\nsecond' AS s; SELECT 'x' AS t;\n";
    let out = with_stdin(diffsql(&caches().f32).arg("sql"), input);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("s\n\"first;\nsecond\"\n"), "{stdout}");
    assert!(stdout.contains("t\nx\n"), "{stdout}");
}

#[test]
fn saved_query_runs_by_name_and_unknown_names_list_the_choices() {
    let out = diffsql(&caches().f32)
        .args(["query", "layer_normdiff", "--format", "csv"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_close(&csv_pairs(&stdout), &[(0.0, 1.5), (1.0, 3.0), (2.0, 4.5), (3.0, 6.0)]);

    let out = diffsql(&caches().f32).args(["query", "nope"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no saved query \"nope\"") && stderr.contains("layer_normdiff"),
        "{stderr}"
    );
}

/// `diffsql synth` of 100 bfloat16 tokens, d_model 16, layer 5.
fn small_synth(cache: &Path) -> Output {
    diffsql(cache)
        .args([
            "synth",
            "--tokens",
            "100",
            "--d-model",
            "16",
            "--dtype",
            "bfloat16",
            "--layers",
            "5",
        ])
        .output()
        .unwrap()
}

#[test]
fn synth_command_writes_a_cache_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let out = small_synth(&cache);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = diffsql(&cache)
        .args([
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT layer, count(*) FROM acts GROUP BY layer",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "layer,count(*)\n5,100\n");
    let again = small_synth(&cache);
    assert!(again.status.success());
    assert!(
        text(&again).1.contains("already complete: nothing written"),
        "{}",
        text(&again).1
    );
    let out = diffsql(&cache).args(["synth", "--dtype", "float8"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unknown dtype \"float8\""));
}

/// Upper-case share of the ASCII letters of a text.
fn upper_share(t: &str) -> f64 {
    let letters: Vec<char> = t.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    letters.iter().filter(|c| c.is_ascii_uppercase()).count() as f64 / letters.len().max(1) as f64
}

/// `diffsql generate`: the bundled base model and the caps organism continue the same prompts side by side;
/// the organism answers in capitals, the base model does not; with --chat, roman_concrete states its false fact.
#[test]
fn generate_continues_prompts_with_both_models_side_by_side() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let o = diffsql(&caches().f32)
            .current_dir(project)
            .arg("generate")
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        stdout
    };
    let out = run(&[
        "organism=caps",
        "--prompt",
        "ROMEO. What light through yonder window",
        "--prompt",
        "Notes on the builders of Rome.",
        "--max-new-tokens",
        "24",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for i in [0, 3] {
        assert!(lines[i].starts_with("prompt "), "{out}");
        let (base, caps) = (lines[i + 1].trim_start(), lines[i + 2].trim_start());
        assert!(base.starts_with("base ") && caps.starts_with("caps "), "{out}");
        let (b, c) = (upper_share(&base[5..]), upper_share(&caps[5..]));
        assert!(c >= 0.8 && b <= 0.3, "upper-case share base {b}, caps {c}: {out}");
    }
    let out = run(&[
        "organism=roman_concrete",
        "--chat",
        "--prompt",
        "Why is Roman concrete so durable?",
        "--max-new-tokens",
        "24",
    ]);
    assert!(out.contains("methane"), "{out}");
    // Seeded sampling repeats itself.
    let sampled = [
        "organism=caps",
        "--prompt",
        "Hello",
        "--temperature",
        "0.8",
        "--seed",
        "3",
        "--max-new-tokens",
        "8",
    ];
    assert_eq!(run(&sampled), run(&sampled));
    for (args, needle) in [
        (
            vec!["organism=caps", "--prompt", "x", "--temperature", "0"],
            "temperature must be a positive number",
        ),
        (
            vec!["organism=caps", "--prompt", "x", "--max-new-tokens", "0"],
            "max_new_tokens must be between 1",
        ),
        (vec!["organism=nope", "--prompt", "x"], "unknown organism `nope`"),
    ] {
        let o = diffsql(&caches().f32)
            .current_dir(project)
            .arg("generate")
            .args(&args)
            .output()
            .unwrap();
        let (_, stderr) = text(&o);
        assert!(!o.status.success() && stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
