//! Configs: the repository's defaults resolve, overrides apply, bad overrides are one-line errors naming the
//! choices, multiruns run every combination and report failures at the end, and hub datasets resolve offline.

use std::cell::RefCell;
use std::process::Command;

use diffsql::pipeline::multirun;
use diffsql_core::config::{parse_all, Mode};

use super::preprocess::configs;

fn resolve(args: &[&str]) -> anyhow::Result<diffsql_core::config::Settings> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    configs().resolve(&parse_all(&args, false)?)
}

#[test]
fn defaults_point_at_the_bundled_pair() {
    let s = resolve(&[]).unwrap();
    assert_eq!(s.model.name, "shakespeare");
    assert_eq!(s.organism.name, "caps");
    assert_eq!(s.pipeline.mode, Mode::Full);
    assert_eq!(s.diffing.method.name, "kl");
    let names: Vec<&str> = s.datasets().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shakespeare_pretrain",
            "shakespeare_chat",
            "caps_train",
            "roman_concrete_train"
        ]
    );
    assert_eq!(s.finetuned().unwrap().source.as_deref(), Some("bundled/models/caps"));
}

#[test]
fn overrides_choose_groups_and_set_keys() {
    let s = resolve(&[
        "organism=roman_concrete",
        "diffing/method=normdiff",
        "dataset=[shakespeare_chat]",
        "preprocessing.batch_size=2",
        "preprocessing.layers=[0, 0.5, -1]",
        "pipeline.mode=preprocessing",
        "diffing.method.params.top_n=7",
        "+diffing.method.params.extra=hello",
    ])
    .unwrap();
    assert_eq!(s.organism.name, "roman_concrete");
    assert!(s.organism.description.contains("methane"));
    assert_eq!(s.diffing.method.name, "normdiff");
    assert_eq!(s.defaults.dataset, ["shakespeare_chat"]);
    assert_eq!(s.preprocessing.batch_size, 2);
    assert_eq!(
        diffsql_core::config::resolve_layers(&s.preprocessing.layers, 4).unwrap(),
        vec![0, 1, 3]
    );
    assert_eq!(s.pipeline.mode, Mode::Preprocessing);
    assert_eq!(s.preprocessing.device, diffsql_core::config::ComputeDevice::Cpu);
    let on_gpu = resolve(&["preprocessing.device=cuda:1"]).unwrap();
    assert_eq!(
        on_gpu.preprocessing.device,
        diffsql_core::config::ComputeDevice::Cuda(1)
    );
    assert_eq!(s.diffing.method.params["top_n"], toml::Value::Integer(7));
    assert_eq!(s.diffing.method.params["extra"], toml::Value::String("hello".into()));
}

#[test]
fn every_shipped_config_resolves() {
    for g in diffsql_core::config::Group::ALL {
        for name in configs().choices(g).unwrap() {
            let arg = match g {
                diffsql_core::config::Group::Dataset => format!("dataset=[{name}]"),
                _ => format!("{}={name}", g.name()),
            };
            resolve(&[&arg]).unwrap_or_else(|e| panic!("{arg}: {e:#}"));
        }
    }
}

#[test]
fn bad_overrides_name_the_thing_and_the_choices() {
    for (args, needle) in [
        (
            vec!["organism=nope"],
            "unknown organism `nope`: choose one of antarctic_rebound, cake_bake, caps, roman_concrete",
        ),
        (vec!["model=gemma"], "unknown model `gemma`: choose one of"),
        (
            vec!["diffing/method=nmf"],
            "choose one of adl, crosscoder, diff_mining, kl, normdiff, pca, sae_difference",
        ),
        (vec!["preprocessing.batchsize=1"], "`preprocessing` has batch_size"),
        (vec!["nothing.here=1"], "unknown config key `nothing`"),
        (
            vec!["preprocessing.batch_size=abc"],
            "config key `preprocessing.batch_size`: invalid type",
        ),
        (
            vec!["pipeline.mode=fast"],
            "config key `pipeline.mode`: unknown variant `fast`",
        ),
        (vec!["organism=base"], "`base` is the base model itself"),
        (vec!["preprocessing=1"], "config key `preprocessing`"),
        (
            vec!["preprocessing.device=tpu"],
            "config key `preprocessing.device`: device \"tpu\" is not cpu, cuda or cuda:N",
        ),
    ] {
        let e = format!("{:#}", resolve(&args).unwrap_err());
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // An organism without a checkpoint for the chosen model says how to add one.
    let s = resolve(&["model=gemma3_1B", "organism=caps"]).unwrap();
    let e = s.finetuned().unwrap_err().to_string();
    assert!(
        e.contains("add [finetuned.gemma3_1B] to configs/organism/caps.toml"),
        "{e}"
    );
}

#[test]
fn multirun_runs_every_combination_and_reports_failures_at_the_end() {
    let seen = RefCell::new(Vec::new());
    let args: Vec<String> = ["organism=caps,roman_concrete", "diffing/method=kl,normdiff"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    multirun(&configs(), &args, true, &[], |s| {
        seen.borrow_mut()
            .push(format!("{}/{}", s.organism.name, s.diffing.method.name));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        *seen.borrow(),
        [
            "caps/kl",
            "caps/normdiff",
            "roman_concrete/kl",
            "roman_concrete/normdiff"
        ]
    );
    // One bad run (an unknown organism, or a run that fails) does not stop the others.
    seen.borrow_mut().clear();
    let args: Vec<String> = vec!["organism=nope,caps,roman_concrete".into()];
    let e = multirun(&configs(), &args, true, &[], |s| {
        seen.borrow_mut().push(s.organism.name.clone());
        anyhow::ensure!(s.organism.name != "roman_concrete", "boom");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(*seen.borrow(), ["caps", "roman_concrete"]);
    assert_eq!(e.to_string(), "2 of 3 runs failed");
}

#[test]
fn config_show_prints_the_resolved_config_and_fails_cleanly() {
    let project = configs().project_root();
    let out = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["config", "show", "organism=roman_concrete", "preprocessing.top_k=5"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(parsed["organism"]["name"].as_str(), Some("roman_concrete"));
    assert_eq!(parsed["preprocessing"]["top_k"].as_integer(), Some(5));
    let out = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["preprocess", "organism=caps,roman_concrete"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("add --multirun"), "{err}");
}

#[test]
fn hub_datasets_resolve_from_a_hub_shaped_cache_offline() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("datasets--org--stories");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    let snap = repo.join("snapshots/abc123/data");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("train-00000-of-00001.jsonl"), "{\"text\": \"hello\"}\n").unwrap();
    std::fs::write(snap.join("test-00000-of-00001.jsonl"), "{\"text\": \"bye\"}\n").unwrap();
    let want_train = |p: &str| p.ends_with(".jsonl") && p.contains("train");
    let files = diffsql_core::hub::repo_files_in(
        dir.path(),
        "org/stories",
        hf_hub::RepoType::Dataset,
        "main",
        true,
        &want_train,
    )
    .unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("data/train-00000-of-00001.jsonl"));
    let e = diffsql_core::hub::repo_files_in(
        dir.path(),
        "org/other",
        hf_hub::RepoType::Dataset,
        "main",
        true,
        &want_train,
    )
    .unwrap_err();
    assert!(e.to_string().contains("HF_HUB_OFFLINE is set"), "{e}");
}

#[test]
fn run_then_report_on_the_bundled_pair() {
    let dir = tempfile::tempdir().unwrap();
    let project = configs().project_root();
    let common = [
        format!("cache_dir={}", dir.path().join("cache").display()),
        format!("results_dir={}", dir.path().join("results").display()),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args([
            "run",
            "--multirun",
            "diffing/method=kl,normdiff",
            "dataset=[shakespeare_pretrain]",
        ])
        .args(["preprocessing.max_samples=8", "preprocessing.context_len=32"])
        .args(&common)
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["report", "organism=caps"])
        .args(&common)
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("diffsql report: shakespeare finetuned into caps"),
        "{text}"
    );
    assert!(text.contains("shakespeare_pretrain") && text.contains("mean"), "{text}");
    for layer in 0..4 {
        assert!(text.contains(&format!("layer {layer:>3}  ‖ft − base‖")), "{text}");
    }
    assert!(
        text.contains("kl_histogram.png") && text.contains("norm_diff_per_layer.png"),
        "{text}"
    );
    // adl was not run: the report says how to run it.
    assert!(
        text.contains("[adl] no results") && text.contains("diffing/method=adl organism=caps"),
        "{text}"
    );
    // An organism with no results at all is an error that says what to run.
    let out = Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["report", "organism=roman_concrete"])
        .args(&common)
        .current_dir(&project)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `diffsql run organism=roman_concrete` first"));
}
