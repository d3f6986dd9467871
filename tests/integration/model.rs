//! The model runtime against transformers: every family's tiny fixture model (tools/make_fixtures.py)
//! must reproduce transformers' per-layer residual stream and logits within 1e-4 (f32), and bad inputs
//! must give clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffsql_model::load::{resolve_hub_in, ModelSource};
use diffsql_model::{load, LoadedModel};

/// Largest allowed |diffsql − transformers| at any layer, position and dimension, in f32.
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// Max |a − b| over the positions the mask marks as tokens.
fn max_error(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().broadcast_mul(&m).unwrap();
    diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check_against_reference(model: &LoadedModel, reference_dir: &Path) {
    check_within(model, reference_dir, TOLERANCE);
}

/// [`check_against_reference`] with another tolerance.
fn check_within(model: &LoadedModel, reference_dir: &Path, tolerance: f32) {
    let r = reference(reference_dir);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &r["attention_mask"];
    let n = model.decoder.num_layers();
    let layers: Vec<usize> = (0..n).collect();
    let out = model.decoder.forward(&ids, mask, &layers, true).unwrap();
    for (i, hidden) in out.layers.iter().enumerate() {
        let err = max_error(hidden, &r[&format!("layer.{i}")], mask);
        assert!(
            err <= tolerance,
            "{}: layer {i} differs from transformers by {err}",
            reference_dir.display()
        );
    }
    let logits = model.decoder.logits(out.final_hidden.as_ref().unwrap()).unwrap();
    let err = max_error(&logits, &r["logits"], mask);
    assert!(
        err <= tolerance,
        "{}: logits differ from transformers by {err}",
        reference_dir.display()
    );
}

fn load_fixture(name: &str) -> LoadedModel {
    load(&ModelSource::Dir(fixture(name)), None, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn llama_matches_transformers() {
    check_against_reference(&load_fixture("llama"), &fixture("llama"));
}

#[test]
fn qwen2_matches_transformers() {
    check_against_reference(&load_fixture("qwen2"), &fixture("qwen2"));
}

#[test]
fn qwen3_matches_transformers() {
    check_against_reference(&load_fixture("qwen3"), &fixture("qwen3"));
}

#[test]
fn gemma3_matches_transformers() {
    check_against_reference(&load_fixture("gemma3"), &fixture("gemma3"));
}

#[test]
fn gpt2_matches_transformers() {
    // Learned positions, LayerNorm, Conv1D weights and a fused qkv, the head tied to the embeddings.
    let model = load_fixture("gpt2");
    assert_eq!(model.files.architecture.name(), "gpt2");
    check_against_reference(&model, &fixture("gpt2"));
}

#[test]
fn mistral_matches_transformers() {
    // A window of 4 on every layer, shorter than the prompts.
    check_against_reference(&load_fixture("mistral"), &fixture("mistral"));
}

#[test]
fn qwen2_5_vl_language_model_matches_transformers_on_text() {
    let model = load_fixture("qwen2_5_vl");
    assert_eq!(model.files.architecture.name(), "qwen2_5_vl");
    check_against_reference(&model, &fixture("qwen2_5_vl"));
}

#[test]
fn gemma2_matches_transformers() {
    check_against_reference(&load_fixture("gemma2"), &fixture("gemma2"));
}

#[test]
fn lora_adapter_merges_like_peft() {
    let model = load(
        &ModelSource::Dir(fixture("llama")),
        Some(&fixture("llama-lora")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check_against_reference(&model, &fixture("llama-lora"));
    // And the adapter really changes the model.
    let base = load_fixture("llama");
    let r = reference(&fixture("llama-lora"));
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let out = base.decoder.forward(&ids, &r["attention_mask"], &[1], false).unwrap();
    assert!(max_error(&out.layers[0], &r["layer.1"], &r["attention_mask"]) > 1e-2);
}

#[test]
fn tokenizer_reproduces_the_reference_ids() {
    let model = load_fixture("gemma3");
    let r = reference(&fixture("gemma3"));
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    let enc = model
        .files
        .tokenizer
        .encode("To be, or not to be, that is the question:", true)
        .unwrap();
    let n = mask[0].iter().filter(|&&m| m == 1).count();
    let expect: Vec<u32> = ids[0][..n].iter().map(|&i| i as u32).collect();
    assert_eq!(enc.get_ids(), expect.as_slice());
    assert!(model
        .files
        .special
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("add_generation_prompt")));
}

#[test]
fn left_padding_gives_the_same_activations_as_right_padding() {
    let model = load_fixture("gemma3");
    let r = reference(&fixture("gemma3"));
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    // Row 2 has 10 tokens and 6 pads on the right: move the pads to the left.
    let n = mask[2].iter().filter(|&&m| m == 1).count();
    let s = ids[2].len();
    let mut left_ids = vec![0u32; s - n];
    left_ids.extend(ids[2][..n].iter().map(|&i| i as u32));
    let mut left_mask = vec![0u32; s - n];
    left_mask.extend(std::iter::repeat_n(1u32, n));
    let left_ids = Tensor::from_vec(left_ids, (1, s), &Device::Cpu).unwrap();
    let left_mask = Tensor::from_vec(left_mask, (1, s), &Device::Cpu).unwrap();
    let out = model.decoder.forward(&left_ids, &left_mask, &[1], false).unwrap();
    let got = out.layers[0].narrow(1, s - n, n).unwrap();
    let expect = r["layer.1"].narrow(0, 2, 1).unwrap().narrow(1, 0, n).unwrap();
    let err = (got - expect)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err <= TOLERANCE, "left padding differs by {err}");
}

/// Lays a fixture out as the Hugging Face hub cache does: models--org--name/{refs/main, snapshots/REV/...}.
fn fake_hub_cache(root: &Path, repo: &str, from: &Path) {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), rev).unwrap();
    let snapshot = repo_dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let blob = repo_dir.join("blobs").join(entry.file_name());
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(entry.file_name())).unwrap();
    }
}

#[test]
fn hub_repo_ids_resolve_offline_from_a_hub_shaped_cache() {
    let cache = tempfile::tempdir().unwrap();
    fake_hub_cache(cache.path(), "diffsql/tiny-qwen3", &fixture("qwen3"));
    let dir = resolve_hub_in(cache.path(), "diffsql/tiny-qwen3", "main", true).unwrap();
    let model = load(&ModelSource::Dir(dir), None, DType::F32, &Device::Cpu).unwrap();
    check_against_reference(&model, &fixture("qwen3"));

    let err = resolve_hub_in(cache.path(), "diffsql/absent", "main", true).unwrap_err();
    assert!(
        format!("{err:#}").contains("is not complete in the Hugging Face cache"),
        "{err:#}"
    );
    assert_eq!(
        ModelSource::parse("google/gemma-3-1b-it").unwrap(),
        ModelSource::Hub {
            repo: "google/gemma-3-1b-it".into(),
            revision: "main".into()
        }
    );
    assert!(ModelSource::parse("not a model").is_err());
}

/// A copy of a fixture with one file changed.
fn broken_copy(name: &str, edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    edit(dir.path());
    dir
}

fn load_error(dir: &Path, adapter: Option<&Path>) -> String {
    format!(
        "{:#}",
        load(&ModelSource::Dir(dir.to_path_buf()), adapter, DType::F32, &Device::Cpu).unwrap_err()
    )
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let missing = broken_copy("llama", |d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    let msg = load_error(missing.path(), None);
    assert!(
        msg.contains("no weights in") && msg.contains("model.safetensors"),
        "{msg}"
    );

    let corrupt = broken_copy("llama", |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    });
    let msg = load_error(corrupt.path(), None);
    assert!(msg.contains("cannot read weights") && msg.contains("corrupt"), "{msg}");

    let unknown = broken_copy("llama", |d| {
        edit_config(d, "\"model_type\": \"llama\"", "\"model_type\": \"mamba\"")
    });
    let msg = load_error(unknown.path(), None);
    assert!(
        msg.contains("unsupported architecture \"mamba\"") && msg.contains("llama, mistral, qwen2"),
        "{msg}"
    );

    let wrong_type = broken_copy("llama", |d| {
        edit_config(d, "\"hidden_size\": 64", "\"hidden_size\": \"64\"")
    });
    let msg = load_error(wrong_type.path(), None);
    assert!(msg.contains("field hidden_size: invalid type: string"), "{msg}");

    let wrong_shape = broken_copy("llama", |d| {
        edit_config(d, "\"intermediate_size\": 128", "\"intermediate_size\": 96")
    });
    let msg = load_error(wrong_shape.path(), None);
    assert!(
        msg.contains("mlp.gate_proj.weight") && msg.contains("has shape [128, 64], the config implies [96, 64]"),
        "{msg}"
    );

    let no_tokenizer = broken_copy("llama", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    let msg = load_error(no_tokenizer.path(), None);
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn lora_adapters_that_do_not_fit_are_refused() {
    // An adapter for a module the base model lacks: another architecture's.
    let foreign = broken_copy("llama-lora", |d| {
        let p = d.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        let renamed: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.replace("self_attn.q_proj", "mixer.in_proj"), v))
            .collect();
        candle_core::safetensors::save(&renamed, &p).unwrap();
    });
    let msg = load_error(&fixture("llama"), Some(foreign.path()));
    assert!(
        msg.contains("mixer.in_proj.weight, which the base model does not have"),
        "{msg}"
    );

    // An adapter whose matrices do not fit the base shapes.
    let misfit = broken_copy("llama-lora", |d| {
        let p = d.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        let cut: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| {
                if k.contains("lora_A") {
                    (k, v.narrow(1, 0, 32).unwrap())
                } else {
                    (k, v)
                }
            })
            .collect();
        candle_core::safetensors::save(&cut, &p).unwrap();
    });
    let msg = load_error(&fixture("llama"), Some(misfit.path()));
    assert!(
        msg.contains("does not fit the base model") && msg.contains("the config implies"),
        "{msg}"
    );

    let not_an_adapter = tempfile::tempdir().unwrap();
    let msg = load_error(&fixture("llama"), Some(not_an_adapter.path()));
    assert!(msg.contains("is") && msg.contains("a PEFT LoRA adapter?"), "{msg}");
}

/// Writes a fixture model as llama.cpp would convert it: GGUF names and metadata, q/k rows permuted for
/// Llama, +1 folded into Gemma norms (f32, so the round trip is exact).
fn write_gguf(name: &str, arch: &str, out: &Path) {
    write_gguf_with(name, arch, out, Vec::new());
}

/// [`write_gguf`] with extra metadata entries (tokenizer settings).
fn write_gguf_with(name: &str, arch: &str, out: &Path, extra: Vec<(String, candle_core::quantized::gguf_file::Value)>) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use diffsql_model::gguf::{hf_name, permute};
    let dir = fixture(name);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let gemma = arch.starts_with("gemma");
    let layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
    let modules = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_q_norm",
        "attn_k_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
        "ffn_norm",
        "post_attention_norm",
        "post_ffw_norm",
    ];
    let mut names: Vec<String> = vec![
        "token_embd.weight".into(),
        "output_norm.weight".into(),
        "output.weight".into(),
    ];
    for i in 0..layers {
        for m in modules {
            for kind in ["weight", "bias"] {
                names.push(format!("blk.{i}.{m}.{kind}"));
            }
        }
    }
    let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap() as usize;
    let mut qtensors = Vec::new();
    for g in names {
        let Some(hf) = hf_name(&g, gemma) else { continue };
        let Some(t) = tensors.get(&hf) else { continue };
        let mut t = t.clone();
        if gemma && hf.ends_with("norm.weight") {
            t = (t + 1.0).unwrap();
        }
        if arch == "llama" && hf.ends_with("q_proj.weight") {
            t = permute(&t, heads).unwrap();
        }
        if arch == "llama" && hf.ends_with("k_proj.weight") {
            t = permute(&t, kv_heads).unwrap();
        }
        qtensors.push((g, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let u = |k: &str| gguf_file::Value::U32(config[k].as_u64().unwrap() as u32);
    let head_dim = config["head_dim"]
        .as_u64()
        .unwrap_or(config["hidden_size"].as_u64().unwrap() / heads as u64) as u32;
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        ("general.architecture".into(), gguf_file::Value::String(arch.into())),
        (format!("{arch}.embedding_length"), u("hidden_size")),
        (format!("{arch}.feed_forward_length"), u("intermediate_size")),
        (format!("{arch}.block_count"), u("num_hidden_layers")),
        (format!("{arch}.attention.head_count"), u("num_attention_heads")),
        (format!("{arch}.attention.head_count_kv"), u("num_key_value_heads")),
        (format!("{arch}.attention.key_length"), gguf_file::Value::U32(head_dim)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (format!("{arch}.rope.freq_base"), gguf_file::Value::F32(10000.0)),
    ];
    if arch == "gemma2" {
        meta.push((format!("{arch}.attention.sliding_window"), u("sliding_window")));
        meta.push((
            format!("{arch}.attn_logit_softcapping"),
            gguf_file::Value::F32(config["attn_logit_softcapping"].as_f64().unwrap() as f32),
        ));
        meta.push((
            format!("{arch}.final_logit_softcapping"),
            gguf_file::Value::F32(config["final_logit_softcapping"].as_f64().unwrap() as f32),
        ));
    }
    meta.extend(extra);
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out.join("model.gguf")).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
}

/// The token ids preprocessing caches for one plain-text sample (BOS as the model's settings decide).
pub fn preprocessing_ids(files: &diffsql_model::ModelFiles, text: &str) -> Vec<u32> {
    use diffsql_model::data::source::Sample;
    use diffsql_model::data::tokenize::{tokenize, Limits};
    let limits = Limits {
        context_len: 4096,
        max_samples: usize::MAX,
        max_tokens: usize::MAX,
    };
    let t = tokenize(
        "d",
        "train",
        &[Sample::Text(text.into())],
        &files.tokenizer,
        files.special.bos_to_add(),
        None,
        limits,
    )
    .unwrap();
    t.sequences[0].ids.clone()
}

#[test]
fn a_gguf_beside_a_bare_tokenizer_json_takes_bos_and_template_from_its_metadata() {
    use candle_core::quantized::gguf_file::Value;
    use diffsql_model::ModelFiles;
    let text = "To be, or not to be";
    for add_bos in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let bos = 2u32;
        write_gguf_with(
            "llama",
            "llama",
            dir.path(),
            vec![
                ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
                ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
                ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
                (
                    "tokenizer.chat_template".into(),
                    Value::String("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
                ),
            ],
        );
        // A tokenizer.json as converters write it for GGUF use: no post-processor adding BOS.
        let path = dir.path().join("tokenizer.json");
        let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        tok["post_processor"] = serde_json::Value::Null;
        std::fs::write(&path, tok.to_string()).unwrap();
        let files = ModelFiles::open(&ModelSource::Gguf(dir.path().join("model.gguf"))).unwrap();
        let ids = &preprocessing_ids(&files, text);
        let plain = files.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        if add_bos {
            assert_eq!(ids[0], bos, "BOS from tokenizer.ggml.add_bos_token");
            assert_eq!(&ids[1..], plain.as_slice());
        } else {
            assert_eq!(ids, &plain);
        }
        let described = files.special.describe();
        assert!(
            described.contains("GGUF metadata tokenizer.ggml.add_bos_token")
                && described.contains("chat template from GGUF metadata"),
            "{described}"
        );
    }
}

#[test]
fn gguf_files_load_like_the_checkpoints_they_came_from() {
    for (name, arch) in [("llama", "llama"), ("gemma2", "gemma2")] {
        let dir = tempfile::tempdir().unwrap();
        write_gguf(name, arch, dir.path());
        let source = ModelSource::parse(dir.path().join("model.gguf").to_str().unwrap()).unwrap();
        assert!(matches!(source, ModelSource::Gguf(_)));
        let model = load(&source, None, DType::F32, &Device::Cpu).unwrap();
        check_against_reference(&model, &fixture(name));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.gguf"), b"GGUF but not really").unwrap();
    let msg = format!(
        "{:#}",
        load(
            &ModelSource::Gguf(dir.path().join("model.gguf")),
            None,
            DType::F32,
            &Device::Cpu
        )
        .unwrap_err()
    );
    assert!(msg.contains("is not a readable GGUF file"), "{msg}");
}

mod generation {
    use super::*;
    use diffsql_model::generate::{generate, GenerateOptions, Sampling};
    use diffsql_model::KvCache;

    fn greedy(max_new_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos: vec![2],
            pad: 0,
            interventions: Vec::new(),
        }
    }

    /// tests/fixtures/models/*/generation.json, made by tools/generation_reference.py with transformers'
    /// `generate` (greedy, three prompts batched and left-padded, 12 new tokens, EOS 2): equal token for token.
    #[test]
    fn greedy_generation_equals_transformers_on_every_family() {
        for family in [
            "llama",
            "qwen2",
            "qwen3",
            "gemma2",
            "gemma3",
            "mistral",
            "qwen2_5_vl",
            "gpt2",
        ] {
            let text = std::fs::read_to_string(fixture(family).join("generation.json")).unwrap();
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ids = |v: &serde_json::Value| -> Vec<Vec<u32>> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|row| {
                        row.as_array()
                            .unwrap()
                            .iter()
                            .map(|t| t.as_u64().unwrap() as u32)
                            .collect()
                    })
                    .collect()
            };
            let model = load_fixture(family);
            let got = generate(&model.decoder, &ids(&r["prompts"]), &greedy(12)).unwrap();
            assert_eq!(got, ids(&r["new_tokens"]), "{family}");
        }
    }

    /// Incremental decoding: the last position's logits after each cached step equal a full recompute over the
    /// whole (left-padded) sequence to 1e-4, on a global-attention and a sliding-window family.
    #[test]
    fn kv_cached_logits_equal_a_full_recompute() {
        for family in ["llama", "gemma3"] {
            let model = load_fixture(family);
            let d = &model.decoder;
            let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 42, 8, 99, 3, 14], vec![7, 21, 33]];
            let longest = 7;
            let mut ids: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| {
                    std::iter::repeat_n(0, longest - p.len())
                        .chain(p.iter().copied())
                        .collect()
                })
                .collect();
            let mut mask: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| {
                    std::iter::repeat_n(0, longest - p.len())
                        .chain(std::iter::repeat_n(1, p.len()))
                        .collect()
                })
                .collect();
            let tensor = |rows: &Vec<Vec<u32>>| {
                let w = rows[0].len();
                Tensor::from_vec(rows.concat(), (rows.len(), w), &Device::Cpu).unwrap()
            };
            let mut cache = KvCache::new(d.num_layers());
            let mut input = tensor(&ids);
            for step in 0..6 {
                let hidden = d.forward_cached(&input, &tensor(&mask), &mut cache).unwrap();
                let cached = d
                    .logits(&hidden.narrow(1, hidden.dim(1).unwrap() - 1, 1).unwrap())
                    .unwrap();
                let full = d.forward(&tensor(&ids), &tensor(&mask), &[], true).unwrap();
                let fh = full.final_hidden.unwrap();
                let recomputed = d.logits(&fh.narrow(1, fh.dim(1).unwrap() - 1, 1).unwrap()).unwrap();
                let err = (cached - recomputed)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    err <= 1e-4,
                    "{family} step {step}: cached logits differ from a recompute by {err}"
                );
                let next: Vec<u32> = vec![(11 + step * 7) as u32, (40 + step) as u32];
                for (r, t) in next.iter().enumerate() {
                    ids[r].push(*t);
                    mask[r].push(1);
                }
                input = Tensor::from_vec(next, (2, 1), &Device::Cpu).unwrap();
            }
        }
    }

    /// Sampling is reproducible for a seed, a tiny top-p is greedy, and bad options are one-line errors.
    #[test]
    fn sampling_is_seeded_and_bad_options_are_refused() {
        let model = load_fixture("llama");
        let prompts = vec![vec![5u32, 17, 42], vec![7, 21]];
        let sample = |seed, top_p| GenerateOptions {
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_p,
                seed,
            },
            ..greedy(10)
        };
        let a = generate(&model.decoder, &prompts, &sample(1, 1.0)).unwrap();
        assert_eq!(a, generate(&model.decoder, &prompts, &sample(1, 1.0)).unwrap());
        let others: Vec<_> = (2..6)
            .map(|s| generate(&model.decoder, &prompts, &sample(s, 1.0)).unwrap())
            .collect();
        assert!(others.iter().any(|o| *o != a), "other seeds draw other tokens");
        assert_eq!(
            generate(&model.decoder, &prompts, &sample(3, 1e-9)).unwrap(),
            generate(&model.decoder, &prompts, &greedy(10)).unwrap()
        );
        for (options, needle) in [
            (greedy(0), "max_new_tokens must be between 1"),
            (
                GenerateOptions {
                    sampling: Sampling::Sample {
                        temperature: 0.0,
                        top_p: 1.0,
                        seed: 0,
                    },
                    ..greedy(4)
                },
                "temperature must be a positive number",
            ),
            (sample(0, 1.5), "top_p must be in (0, 1]"),
        ] {
            let e = generate(&model.decoder, &prompts, &options).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = generate(&model.decoder, &[vec![]], &greedy(3)).unwrap_err().to_string();
        assert!(e.contains("prompt 0 has no tokens"), "{e}");
    }
}

mod interventions {
    use super::*;
    use diffsql_model::{Edit, Intervention, KvCache, Positions};

    fn logits_of(model: &LoadedModel, ids: &[u32], interventions: &[Intervention]) -> Tensor {
        let d = &model.decoder;
        let n = ids.len();
        let input = Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
        let hidden = d
            .forward_intervened(&input, &mask, &mut KvCache::new(d.num_layers()), interventions)
            .unwrap();
        d.logits(&hidden).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Closed forms on the llama fixture: adding α·v after the last layer gives the logit lens of x_L + α·v;
    /// replacing one position after the last layer gives the lens of the vector there and leaves the others;
    /// replacing a position after layer 0 changes that position and later ones (attention), never earlier ones.
    #[test]
    fn interventions_change_the_residual_stream_as_specified() {
        let model = load_fixture("llama");
        let d = &model.decoder;
        let h = d.spec().hidden;
        let last = d.num_layers() - 1;
        let ids: Vec<u32> = vec![5, 17, 42, 8, 99, 3];
        let n = ids.len();
        let v: Vec<f32> = (0..h).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
        let vt = Tensor::from_vec(v.clone(), (1, 1, h), &Device::Cpu).unwrap();
        let plain = logits_of(&model, &ids, &[]);
        let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
        let x_last = d.forward(&input, &mask, &[last], false).unwrap().layers.remove(0);
        let iv = |edit, scale, positions| Intervention {
            layer: last,
            vector: v.clone(),
            scale,
            edit,
            positions,
        };
        let steered = logits_of(&model, &ids, &[iv(Edit::Add, 3.0, Positions::All)]);
        let expected = d
            .logit_lens(&x_last.broadcast_add(&(&vt * 3.0).unwrap()).unwrap())
            .unwrap();
        assert!(max_diff(&steered, &expected) <= 1e-4);
        let patched = logits_of(&model, &ids, &[iv(Edit::Replace, 2.0, Positions::At(vec![2]))]);
        let lens = d.logit_lens(&(&vt * 2.0).unwrap()).unwrap();
        assert!(max_diff(&patched.narrow(1, 2, 1).unwrap(), &lens) <= 1e-4);
        for p in [0, 1, 3, 4, 5] {
            assert!(
                max_diff(&patched.narrow(1, p, 1).unwrap(), &plain.narrow(1, p, 1).unwrap()) <= 1e-5,
                "position {p}"
            );
        }
        let early = Intervention {
            layer: 0,
            ..iv(Edit::Replace, 2.0, Positions::At(vec![2]))
        };
        let patched = logits_of(&model, &ids, &[early]);
        for p in 0..n {
            let diff = max_diff(&patched.narrow(1, p, 1).unwrap(), &plain.narrow(1, p, 1).unwrap());
            if p < 2 {
                assert!(diff <= 1e-5, "position {p} is before the patch: {diff}");
            } else {
                assert!(diff > 1e-3, "position {p} is at or after the patch: {diff}");
            }
        }
        // Bad interventions are errors naming what is wrong.
        let e = format!(
            "{:#}",
            d.forward_intervened(
                &input,
                &mask,
                &mut KvCache::new(d.num_layers()),
                &[Intervention {
                    vector: vec![1.0; 3],
                    ..iv(Edit::Add, 1.0, Positions::All)
                }]
            )
            .unwrap_err()
        );
        assert!(e.contains("has 3 values") && e.contains(&h.to_string()), "{e}");
        let e = format!(
            "{:#}",
            d.forward_intervened(
                &input,
                &mask,
                &mut KvCache::new(d.num_layers()),
                &[Intervention {
                    layer: 9,
                    ..iv(Edit::Add, 1.0, Positions::All)
                }]
            )
            .unwrap_err()
        );
        assert!(e.contains("layer 9 does not exist"), "{e}");
    }

    /// Steering during generation: α = 0 generates what no intervention does; a large α changes the text.
    #[test]
    fn steering_applies_during_generation() {
        use diffsql_model::generate::{generate, GenerateOptions, Sampling};
        let model = load_fixture("llama");
        let h = model.decoder.spec().hidden;
        let prompts = vec![vec![5u32, 17, 42], vec![7, 21]];
        let options = |alpha: f32| GenerateOptions {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            eos: vec![2],
            pad: 0,
            interventions: vec![Intervention {
                layer: 0,
                vector: (0..h).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect(),
                scale: alpha,
                edit: Edit::Add,
                positions: Positions::All,
            }],
        };
        let plain = GenerateOptions {
            interventions: Vec::new(),
            ..options(0.0)
        };
        let base = generate(&model.decoder, &prompts, &plain).unwrap();
        assert_eq!(generate(&model.decoder, &prompts, &options(0.0)).unwrap(), base);
        assert_ne!(generate(&model.decoder, &prompts, &options(50.0)).unwrap(), base);
    }
}

#[test]
fn lora_with_rslora_rank_patterns_embedding_lora_and_modules_to_save_merges_like_peft() {
    // tools/make_peft_fixtures.py: rsLoRA, rank/alpha patterns on gate_proj, a LoRA on the embeddings and
    // the head trained in full (modules_to_save), against PEFT's merge_and_unload().
    let model = load(
        &ModelSource::Dir(fixture("llama")),
        Some(&fixture("llama-lora-extras")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    // PEFT's merged model to 1e-5, as the plain adapter (the bar for merges).
    check_within(&model, &fixture("llama-lora-extras"), 1e-5);
    // The head trained in full on a model whose head is tied to its embeddings: PEFT unties them.
    let model = load(
        &ModelSource::Dir(fixture("qwen2")),
        Some(&fixture("qwen2-lora-tied")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check_within(&model, &fixture("qwen2-lora-tied"), 1e-5);
    // GPT-2's Conv1D projections (fan_in_fan_out), merged before its weights are renamed and split.
    let model = load(
        &ModelSource::Dir(fixture("gpt2")),
        Some(&fixture("gpt2-lora")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check_against_reference(&model, &fixture("gpt2-lora"));
}

/// A Hugging Face hub cache as `huggingface_hub` lays it out, holding `repo` at a commit, with `files`
/// (relative path in the repo, file to copy).
fn hub_repo(cache: &Path, repo: &str, files: &[(String, PathBuf)]) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), "0123abcd").unwrap();
    for (rel, from) in files {
        let to = root.join("snapshots/0123abcd").join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

fn dir_files(dir: &Path, under: &str) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let rel = if under.is_empty() {
                name
            } else {
                format!("{under}/{name}")
            };
            (rel, p)
        })
        .collect()
}

#[test]
fn adapters_in_a_subfolder_of_a_hub_repo_resolve_from_the_cache_and_merge_like_peft() {
    let cache = tempfile::tempdir().unwrap();
    hub_repo(
        cache.path(),
        "diffsql-fixtures/tiny-llama",
        &dir_files(&fixture("llama"), ""),
    );
    let mut adapters = dir_files(&fixture("llama-lora-extras"), "personas/extras");
    adapters.extend(dir_files(&fixture("llama-lora"), "personas/plain"));
    hub_repo(cache.path(), "diffsql-fixtures/organisms", &adapters);

    let base = resolve_hub_in(cache.path(), "diffsql-fixtures/tiny-llama", "main", true).unwrap();
    for (id, reference_dir) in [
        ("diffsql-fixtures/organisms/personas/extras", "llama-lora-extras"),
        ("diffsql-fixtures/organisms/personas/plain", "llama-lora"),
    ] {
        let adapter = diffsql_core::hub::resolve_adapter_in(cache.path(), id, "main", true).unwrap();
        let model = load(
            &ModelSource::Dir(base.clone()),
            Some(&adapter),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        check_against_reference(&model, &fixture(reference_dir));
    }
    let e = diffsql_core::hub::resolve_adapter_in(
        cache.path(),
        "diffsql-fixtures/organisms/personas/sarcasm",
        "main",
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no adapter in `personas/sarcasm`") && e.contains("personas/extras, personas/plain"),
        "{e}"
    );
}

#[test]
fn adapters_diffsql_cannot_merge_are_refused_by_name_and_another_base_is_named() {
    for (key, value, needle) in [
        ("use_dora", "true", "a DoRA adapter (use_dora)"),
        ("peft_type", "\"IA3\"", "adapter type \"IA3\""),
        ("lora_bias", "true", "a LoRA with biases"),
        ("trainable_token_indices", "[5, 6]", "trainable tokens"),
    ] {
        let broken = broken_copy("llama-lora-extras", |d| {
            let p = d.join("adapter_config.json");
            let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            config[key] = serde_json::from_str(value).unwrap();
            std::fs::write(&p, config.to_string()).unwrap();
        });
        let msg = load_error(&fixture("llama"), Some(broken.path()));
        assert!(msg.contains(needle) && msg.contains("cannot be merged"), "{key}: {msg}");
    }
    let config = diffsql_model::lora::AdapterConfig::read(&fixture("llama-lora-extras")).unwrap();
    assert_eq!(config.rank_and_alpha("model.layers.1.mlp.gate_proj").unwrap(), (2, 3.0));
    assert_eq!(
        config.rank_and_alpha("model.layers.1.self_attn.q_proj").unwrap(),
        (4, 8.0)
    );
    assert!(diffsql_model::pair::other_base(&config, "diffsql-fixtures/tiny-llama").is_none());
    let w = diffsql_model::pair::other_base(&config, "meta-llama/Llama-3.2-1B").unwrap();
    assert!(
        w.contains("trained on diffsql-fixtures/tiny-llama") && w.contains("base model is meta-llama/Llama-3.2-1B"),
        "{w}"
    );
    // A local base (a path) cannot be compared with a hub id: no warning.
    assert!(diffsql_model::pair::other_base(&config, "/models/tiny-llama").is_none());
}

/// A GGUF with its vocabulary in its metadata and no tokenizer.json beside it (as llama.cpp's converter writes
/// a byte-level BPE model: tokens by id, token types, merges, special ids) tokenises as the tokenizer.json it
/// was made from; a GGUF without a vocabulary says what to do. (The real SmolLM2 and Gemma-3 files against
/// transformers: real_models.rs.)
#[test]
fn a_gguf_alone_builds_its_tokenizer_from_its_metadata() {
    use candle_core::quantized::gguf_file::Value;
    use diffsql_model::ModelFiles;
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama").join("tokenizer.json")).unwrap()).unwrap();
    let vocab = source["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let specials: Vec<u64> = source["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let types: Vec<Value> = (0..tokens.len() as u64)
        .map(|i| Value::I32(if specials.contains(&i) { 3 } else { 1 }))
        .collect();
    let merges: Vec<Value> = source["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => {
                Value::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()))
            }
            other => Value::String(other.as_str().unwrap().to_string()),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_gguf_with(
        "llama",
        "llama",
        dir.path(),
        vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ],
    );
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let files = ModelFiles::open(&ModelSource::Gguf(dir.path().join("model.gguf"))).unwrap();
    let original = load_fixture("llama");
    for text in [
        "To be, or not to be, that is the question:",
        "  Now is the winter\n\nof our <eos> discontent 1234 ÿ é",
        "<bos>All the world's a stage,",
    ] {
        let want = original.files.tokenizer.encode(text, true).unwrap();
        let got = files.tokenizer.encode(text, true).unwrap();
        assert_eq!(got.get_ids(), want.get_ids(), "{text:?}");
        assert_eq!(got.get_ids()[0], 1, "BOS as tokenizer.ggml.add_bos_token says");
        assert_eq!(
            files.tokenizer.decode(got.get_ids(), true).unwrap(),
            original.files.tokenizer.decode(want.get_ids(), true).unwrap()
        );
    }
    // Without a vocabulary in the metadata nor a tokenizer.json beside it: a one-line error naming both.
    let bare = tempfile::tempdir().unwrap();
    write_gguf("llama", "llama", bare.path());
    std::fs::remove_file(bare.path().join("tokenizer.json")).unwrap();
    let msg = format!(
        "{:#}",
        ModelFiles::open(&ModelSource::Gguf(bare.path().join("model.gguf"))).unwrap_err()
    );
    assert!(
        msg.contains("no tokenizer.ggml.tokens") && msg.contains("tokenizer"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// From the outside: an organism config naming an adapter in a subfolder of a hub repo (`org/repo/subfolder`),
/// resolved offline from a local Hugging Face cache by `diffsql generate`; the same adapter as a local directory
/// gives the same text; an adapter trained on another base is named in a warning; a missing variant or
/// subfolder is a one-line error listing what exists.
#[test]
fn an_organism_naming_a_subfolder_adapter_runs_offline_from_a_hub_cache() {
    let hub = tempfile::tempdir().unwrap();
    hub_repo(
        hub.path(),
        "diffsql-fixtures/tiny-llama",
        &dir_files(&fixture("llama"), ""),
    );
    hub_repo(
        hub.path(),
        "diffsql-fixtures/tiny-llama-copy",
        &dir_files(&fixture("llama"), ""),
    );
    hub_repo(
        hub.path(),
        "diffsql-fixtures/organisms",
        &dir_files(&fixture("llama-lora-extras"), "personas/extras"),
    );
    let configs = tempfile::tempdir().unwrap();
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs"), configs.path());
    std::fs::write(
        configs.path().join("model/tiny.toml"),
        "source = \"diffsql-fixtures/tiny-llama\"\ndtype = \"float32\"\n",
    )
    .unwrap();
    std::fs::write(
        configs.path().join("model/tiny_copy.toml"),
        "source = \"diffsql-fixtures/tiny-llama-copy\"\ndtype = \"float32\"\n",
    )
    .unwrap();
    std::fs::write(
        configs.path().join("organism/persona.toml"),
        format!(
            "description = \"a persona\"\ntype = \"character_training\"\n\
             [finetuned.tiny.default]\nadapter = \"diffsql-fixtures/organisms/personas/extras\"\n\
             [finetuned.tiny.local]\nadapter = \"{}\"\n\
             [finetuned.tiny.missing]\nadapter = \"diffsql-fixtures/organisms/personas/sarcasm\"\n\
             [finetuned.tiny_copy]\nadapter = \"diffsql-fixtures/organisms/personas/extras\"\n",
            fixture("llama-lora-extras").display()
        ),
    )
    .unwrap();
    let generate = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
            .arg("--configs")
            .arg(configs.path())
            .args([
                "generate",
                "--prompt",
                "To be, or not",
                "--max-new-tokens",
                "6",
                "organism=persona",
            ])
            .args(extra)
            .env("HF_HUB_CACHE", hub.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, from_hub, err) = generate(&["model=tiny"]);
    assert!(ok && !err.contains("warning"), "{err}");
    let (ok, from_dir, err) = generate(&["model=tiny", "organism.variant=local"]);
    assert!(ok, "{err}");
    // The same texts (the organism's label names its variant: `persona.local`).
    let texts = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.rsplit_once("  \"").map(|(_, t)| t.to_string()))
            .collect()
    };
    assert_eq!(texts(&from_hub).len(), 2, "{from_hub}");
    assert_eq!(
        texts(&from_hub),
        texts(&from_dir),
        "the hub's subfolder and the local directory hold the same adapter"
    );
    let (ok, _, err) = generate(&["model=tiny_copy"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "warning: organism persona for model tiny_copy: the adapter was trained on diffsql-fixtures/tiny-llama"
        ) && err.contains("the config's base model is diffsql-fixtures/tiny-llama-copy"),
        "{err}"
    );
    for (args, needles) in [
        (
            vec!["model=tiny", "organism.variant=nope"],
            vec!["no variant `nope`", "default, local, missing"],
        ),
        (
            vec!["model=tiny", "organism.variant=missing"],
            vec![
                "no adapter in `personas/sarcasm`",
                "its adapters are in: personas/extras",
            ],
        ),
        (
            vec!["model=gemma3_1B"],
            vec!["no finetuned checkpoint for model gemma3_1B", "tiny, tiny_copy"],
        ),
    ] {
        let (ok, _, err) = generate(&args);
        assert!(!ok, "{args:?}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
}
