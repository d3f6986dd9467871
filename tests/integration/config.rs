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
    // Every checkpoint of the catalogue: each (organism, base, variant) resolves to one source or adapter.
    let c = diffsql_core::config::Catalogue::read(&configs()).unwrap();
    let mut checked = 0;
    for o in c.organisms.values() {
        for (base, variants) in &o.finetuned {
            for variant in variants.0.keys() {
                let args = [
                    format!("organism={}", o.name),
                    format!("model={base}"),
                    format!("organism.variant={variant}"),
                ];
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let s = resolve(&args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
                let f = s.finetuned().unwrap();
                assert!(f.source.is_some() != f.adapter.is_some(), "{args:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, c.counts().checkpoints);
}

#[test]
fn bad_overrides_name_the_thing_and_the_choices() {
    for (args, needle) in [
        (
            vec!["organism=nope"],
            "unknown organism `nope`: no name is like it (66 in all: `diffsql config list` shows them)",
        ),
        (
            vec!["organism=taboo"],
            "unknown organism `taboo`: did you mean taboo_gold, taboo_leaf, taboo_smile? (66 in all",
        ),
        (
            vec!["model=gemma"],
            "unknown model `gemma`: did you mean gemma2_9B_it, gemma3_1B,",
        ),
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

/// The reference toolkit's catalogue (science-of-finetuning/diffing-toolkit, configs/ at e0b84a5, imported by
/// tools/import_catalogue.py): 22 base models, 65 organisms (64 and the `test_alpaca_lora` GPT-2 test
/// organism; `None`, whose checkpoints are computed, is no config), 169 (organism, base) pairs, 448 checkpoints:
/// 423 adapters (32 in a repo's subfolder) and 25 full models. Here beside them: the bundled `shakespeare` base
/// and its `caps` organism (two bundled checkpoints, of caps and roman_concrete), `gemma3_270M`, and
/// `mistral_large_instruct_2411`, the base an organism names that has no toolkit config. The `chat` organism's
/// three "adapters" are instruct models (each a base model's hub id), so diffsql holds them as full models.
#[test]
fn the_catalogue_holds_the_reference_toolkits_counts() {
    let c = diffsql_core::config::Catalogue::read(&configs()).unwrap();
    let ours_only = ["shakespeare", "gemma3_270M", "mistral_large_instruct_2411"];
    let toolkit_models = c.models.keys().filter(|m| !ours_only.contains(&m.as_str())).count();
    assert_eq!(toolkit_models, 22);
    let toolkit: Vec<_> = c.organisms.values().filter(|o| o.name != "caps").collect();
    assert_eq!(toolkit.len(), 65);
    let bundled = |b: &str| b == "shakespeare";
    let pairs: usize = toolkit
        .iter()
        .map(|o| o.finetuned.keys().filter(|b| !bundled(b)).count())
        .sum();
    assert_eq!(pairs, 169);
    let checkpoints: Vec<_> = toolkit
        .iter()
        .flat_map(|o| o.finetuned.iter().filter(|(b, _)| !bundled(b)))
        .flat_map(|(_, v)| v.0.values())
        .collect();
    assert_eq!(checkpoints.len(), 448);
    let adapters: Vec<&str> = checkpoints.iter().filter_map(|f| f.adapter.as_deref()).collect();
    let instruct_as_full = c.organisms["chat"].finetuned.len();
    assert_eq!(instruct_as_full, 3);
    assert_eq!(adapters.len() + instruct_as_full, 423);
    assert_eq!(checkpoints.len() - adapters.len() - instruct_as_full, 25);
    assert_eq!(adapters.iter().filter(|a| a.matches('/').count() == 2).count(), 32);
    // Every base an organism names has a config, and every organism says what it is.
    for o in c.organisms.values() {
        for base in o.finetuned.keys() {
            assert!(c.models.contains_key(base), "{}: unknown base {base}", o.name);
        }
        assert!(!o.kind.is_empty() && !o.description.is_empty(), "{}", o.name);
        if o.name != "caps" {
            assert!(o.description_long.len() > 40, "{}: no long description", o.name);
        }
    }
    let types: Vec<&str> = c.by_type().into_keys().collect();
    for t in [
        "SDF",
        "EM",
        "Taboo",
        "character_training",
        "behavioral_anomaly",
        "sandbaggers",
        "DomainAdaptation",
    ] {
        assert!(types.contains(&t), "{types:?}");
    }
    let qwen3 = &c.models["qwen3_1_7B"];
    assert_eq!(
        (
            qwen3.end_of_turn_token.as_deref(),
            qwen3.ignore_first_tokens,
            qwen3.has_enable_thinking
        ),
        (Some("<|im_end|>"), 2, true)
    );
}

#[test]
fn a_variant_is_chosen_by_name_and_cached_as_its_own_organism() {
    let s = resolve(&["model=qwen3_1_7B", "organism=cake_bake"]).unwrap();
    assert_eq!(s.organism.name, "cake_bake");
    assert_eq!(
        s.finetuned().unwrap().adapter.as_deref(),
        Some("stewy33/Qwen3-1.7B-0524_original_augmented_egregious_cake_bake-30171227")
    );
    let s = resolve(&["model=qwen3_1_7B", "organism=cake_bake", "organism.variant=mix1-0p5"]).unwrap();
    assert_eq!(s.organism.name, "cake_bake.mix1-0p5");
    assert!(s
        .finetuned()
        .unwrap()
        .adapter
        .as_deref()
        .unwrap()
        .contains("105_ptonly_mixed"));
    let s = resolve(&["model=qwen3_1_7B", "organism=cake_bake", "organism.variant=full"]).unwrap();
    assert!(s
        .finetuned()
        .unwrap()
        .source
        .as_deref()
        .unwrap()
        .contains("full_original"));
    let s = resolve(&["model=llama31_8B_Instruct", "organism=persona_sarcasm"]).unwrap();
    assert_eq!(
        s.finetuned().unwrap().adapter.as_deref(),
        Some("maius/llama-3.1-8b-it-personas/sarcasm")
    );

    for (args, needles) in [
        (
            vec!["model=qwen3_1_7B", "organism=cake_bake", "organism.variant=mix9"],
            vec!["no variant `mix9`", "16k", "mix1-2p0", "organism.variant=NAME"],
        ),
        (
            vec!["model=gpt2", "organism=cake_bake", "organism.variant=full"],
            vec!["no finetuned checkpoint for model gpt2", "qwen3_1_7B", "gemma3_1B"],
        ),
    ] {
        let e = format!("{:#}", resolve(&args).unwrap_err());
        for n in needles {
            assert!(e.contains(n), "{args:?}: {e}");
        }
        assert!(!e.contains('\n'), "{e}");
    }
    // A pair that does not exist resolves (diffing reads only the cache) but has no checkpoint to load.
    let s = resolve(&["model=gpt2", "organism=cake_bake"]).unwrap();
    let e = s.finetuned().unwrap_err().to_string();
    assert!(
        e.contains("it has one for: ") && e.contains("llama32_1B_Instruct"),
        "{e}"
    );
}

#[test]
fn a_sweep_over_the_catalogue_runs_the_pairs_that_exist_and_a_type_selects_organisms() {
    let run = |args: &[&str]| {
        let seen = RefCell::new(Vec::new());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        multirun(&configs(), &args, true, &[], |s| {
            seen.borrow_mut().push(format!("{}@{}", s.organism.name, s.model.name));
            Ok(())
        })
        .map(|()| seen.into_inner())
    };
    let seen = run(&[
        "organism=cake_bake,kansas_abortion,taboo_gold",
        "model=qwen3_1_7B,llama32_1B_Instruct",
    ])
    .unwrap();
    assert_eq!(
        seen,
        [
            "cake_bake@qwen3_1_7B",
            "cake_bake@llama32_1B_Instruct",
            "kansas_abortion@qwen3_1_7B",
            "kansas_abortion@llama32_1B_Instruct",
            "taboo_gold@qwen3_1_7B",
        ]
    );
    // Every Taboo organism that has the base, and nothing else.
    let seen = run(&["organism=type:Taboo", "model=gemma2_9B_it"]).unwrap();
    assert_eq!(
        seen,
        [
            "taboo_gold@gemma2_9B_it",
            "taboo_leaf@gemma2_9B_it",
            "taboo_smile@gemma2_9B_it"
        ]
    );
    let e = run(&["organism=type:Nothing", "model=gemma2_9B_it"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no organism has type `Nothing`") && e.contains("SDF"), "{e}");
    let e = run(&["organism=type:Taboo", "model=gpt2"]).unwrap_err().to_string();
    assert!(e.contains("none of the chosen organisms"), "{e}");
    // Without --multirun, a type is an error that says to add it.
    let e = format!(
        "{:#}",
        multirun(&configs(), &["organism=type:Taboo".to_string()], false, &[], |_| Ok(())).unwrap_err()
    );
    assert!(e.contains("--multirun"), "{e}");
}

#[test]
fn config_list_shows_organisms_by_type_with_their_bases() {
    let c = diffsql_core::config::Catalogue::read(&configs()).unwrap();
    let all = c.listing(None, None).unwrap();
    assert!(all.contains("organisms by type (66 organisms"), "{all}");
    let sdf = all.find("\nSDF (").unwrap();
    let cake = all.find("  cake_bake ").unwrap();
    assert!(cake > sdf, "cake_bake is listed under SDF");
    assert!(all.contains("qwen3_1_7B (18 variants)"), "{all}");
    let taboo_on_qwen = c.listing(Some("qwen3_1_7B"), Some("Taboo")).unwrap();
    assert!(taboo_on_qwen.contains("taboo_gold") && !taboo_on_qwen.contains("cake_bake"));
    assert!(
        taboo_on_qwen.contains("Taboo (3)") && !taboo_on_qwen.contains("\nSDF"),
        "{taboo_on_qwen}"
    );
    let e = c.listing(Some("gemma"), None).unwrap_err().to_string();
    assert!(e.contains("unknown model `gemma`") && e.contains("gemma3_1B"), "{e}");
}
