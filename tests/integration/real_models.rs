//! Opt-in: the real GGUF checkpoints (SmolLM2-135M-Instruct, Gemma-3-270M) against transformers run on the
//! same dequantised weights. Prepare once, then run:
//!
//! ```sh
//! tools/fetch-real-models.sh DIR && python3 tools/real_model_reference.py DIR
//! DIFFSQL_REAL_MODELS=DIR cargo test --test integration real_models -- --ignored --nocapture
//! ```
//!
//! The tests are `#[ignore]`d so that `cargo test` never counts them as passed without their models; run with
//! `--ignored` they fail, naming the variable, when `DIFFSQL_REAL_MODELS` is not set.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use diffsql_model::{load, ModelFiles, ModelSource};

/// Largest allowed max|diffsql − transformers| / max|transformers| per layer and for the logits, in f32.
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The directory of the prepared real models.
fn real_models_dir() -> PathBuf {
    std::env::var_os("DIFFSQL_REAL_MODELS")
        .map(PathBuf::from)
        .expect("set DIFFSQL_REAL_MODELS to the directory tools/fetch-real-models.sh filled (see this file's header)")
}

#[test]
#[ignore = "needs the real GGUF models: DIFFSQL_REAL_MODELS=DIR cargo test --test integration real_models -- --ignored"]
fn real_models_match_transformers_and_decode_the_same_text() {
    let root = real_models_dir();
    for name in ["smollm2-135m", "gemma3-270m"] {
        let dir = root.join(name);
        let model = load(
            &ModelSource::Gguf(dir.join("model.gguf")),
            None,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = &r["attention_mask"];
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let layers: Vec<usize> = (0..model.decoder.num_layers()).collect();
        let out = model.decoder.forward(&ids, mask, &layers, true).unwrap();
        let mut worst = 0f32;
        for (i, h) in out.layers.iter().enumerate() {
            let expect = r[&format!("layer.{i}")].broadcast_mul(&m).unwrap();
            let err = max_abs(&(h.broadcast_mul(&m).unwrap() - &expect).unwrap()) / max_abs(&expect);
            worst = worst.max(err);
            assert!(err <= RELATIVE_TOLERANCE, "{name}: layer {i} relative error {err}");
        }
        let logits = model
            .decoder
            .logits(out.final_hidden.as_ref().unwrap())
            .unwrap()
            .broadcast_mul(&m)
            .unwrap();
        let expect = r["logits"].broadcast_mul(&m).unwrap();
        let logit_err = max_abs(&(&logits - &expect).unwrap()) / max_abs(&expect);
        assert!(
            logit_err <= RELATIVE_TOLERANCE,
            "{name}: logits relative error {logit_err}"
        );

        // Greedy decoding reproduces transformers' continuation token for token.
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let expected: Vec<u32> = reference["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let prompt = model
            .files
            .tokenizer
            .encode(reference["prompt"].as_str().unwrap(), true)
            .unwrap();
        let mut tokens: Vec<u32> = prompt.get_ids().to_vec();
        let prompt_len = tokens.len();
        while tokens.len() < expected.len() {
            let n = tokens.len();
            let ids = Tensor::from_vec(tokens.clone(), (1, n), &Device::Cpu).unwrap();
            let ones = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
            let out = model.decoder.forward(&ids, &ones, &[], true).unwrap();
            let last = out.final_hidden.unwrap().narrow(1, n - 1, 1).unwrap();
            let next = model
                .decoder
                .logits(&last)
                .unwrap()
                .flatten_all()
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            tokens.push(next);
        }
        let text = model.files.tokenizer.decode(&tokens[prompt_len..], false).unwrap();
        eprintln!(
            "{name}: {} layers, worst layer relative error {worst:.2e}, logits {logit_err:.2e}; greedy: {:?}",
            layers.len(),
            text
        );
        assert_eq!(
            tokens, expected,
            "{name}: greedy continuation differs from transformers"
        );
        // The KV-cached generation engine gives the same continuation.
        let options = diffsql_model::generate::GenerateOptions {
            max_new_tokens: expected.len() - prompt_len,
            sampling: diffsql_model::generate::Sampling::Greedy,
            eos: Vec::new(),
            pad: 0,
            interventions: Vec::new(),
        };
        let generated =
            diffsql_model::generate::generate(&model.decoder, &[tokens[..prompt_len].to_vec()], &options).unwrap();
        assert_eq!(
            generated[0],
            expected[prompt_len..],
            "{name}: KV-cached generation differs from transformers"
        );
    }
}

#[test]
#[ignore = "needs the real GGUF models: DIFFSQL_REAL_MODELS=DIR cargo test --test integration real_models -- --ignored"]
fn real_gguf_models_are_tokenised_as_transformers_reads_the_gguf() {
    let root = real_models_dir();
    for name in ["smollm2-135m", "gemma3-270m"] {
        let dir = root.join(name);
        let files = ModelFiles::open(&ModelSource::Gguf(dir.join("model.gguf"))).unwrap();
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let cases = reference["gguf_tokenization"]
            .as_array()
            .expect("reference.json from the current tools/real_model_reference.py");
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let expect: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = super::model::preprocessing_ids(&files, text);
            eprintln!("{name}: {text:?} -> {:?} ({})", ids, files.special.describe());
            assert_eq!(ids, expect, "{name}: {text:?}");
        }
    }
}

/// A GGUF alone (no tokenizer.json beside it): the tokenizer diffsql builds from its metadata gives the ids
/// transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives (tools/gguf_tokenizer_reference.py,
/// tests/fixtures/gguf_tokenizer/), on text with spaces, code, Unicode, emoji and chat markup.
#[test]
#[ignore = "needs the real GGUF models: DIFFSQL_REAL_MODELS=DIR cargo test --test integration real_models -- --ignored"]
fn real_models_tokenizers_from_gguf_metadata_equal_transformers() {
    let root = real_models_dir();
    for name in ["smollm2-135m", "gemma3-270m"] {
        let alone = tempfile::tempdir().unwrap();
        let gguf = alone.path().join("model.gguf");
        std::os::unix::fs::symlink(root.join(name).join("model.gguf"), &gguf).unwrap();
        let files = ModelFiles::open(&ModelSource::Gguf(gguf)).unwrap();
        let fixture =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/gguf_tokenizer/{name}.json"));
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        for row in reference["rows"].as_array().unwrap() {
            let text = row["text"].as_str().unwrap();
            let want: Vec<u32> = row["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = files.tokenizer.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{name}: {text:?}");
        }
        eprintln!(
            "{name}: {} texts tokenised as transformers does",
            reference["rows"].as_array().unwrap().len()
        );
    }
}
