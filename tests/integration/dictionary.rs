//! Dictionaries: the trainers' math against PyTorch, PCA against a closed form, recovery of planted
//! directions, resuming a killed run, the SQL functions over a trained dictionary, and bad input.

use candle_core::{Device, Tensor, Var};
use diffsql_train::host::HostTrainer;
use diffsql_train::sparse_coder::{Adam, CoderSpec, SparseCoder, Sparsity, StepSettings};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let allowed = tol * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= allowed,
            "{what}[{i}]: got {g}, PyTorch {w} (tolerance {allowed})"
        );
    }
}

/// tests/fixtures/dictionary/reference.json, made by tools/dictionary_reference.py with PyTorch: the forward
/// pass, the loss terms and one Adam step agree to 1e-5 (relative above 1).
#[test]
fn forward_loss_and_one_adam_step_equal_pytorch() {
    let text = std::fs::read_to_string("tests/fixtures/dictionary/reference.json").unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let sides = case["sides"].as_u64().unwrap() as usize;
        let d = case["d_model"].as_u64().unwrap() as usize;
        let m = case["latents"].as_u64().unwrap() as usize;
        let sparsity = match case["sparsity"].as_str().unwrap() {
            "batch_topk" => Sparsity::BatchTopK,
            _ => Sparsity::L1,
        };
        let spec = CoderSpec {
            sides,
            d_model: d,
            latents: m,
            sparsity,
            sae: case["sae"].as_bool().unwrap(),
        };
        let w = spec.width();
        let dev = Device::Cpu;
        let p = &case["params"];
        let var = |key: &str, shape: &[usize]| {
            Var::from_tensor(&Tensor::from_vec(floats(&p[key]), shape, &dev).unwrap()).unwrap()
        };
        let coder = SparseCoder {
            spec,
            w_enc: var("w_enc", &[w, m]),
            b_enc: var("b_enc", &[m]),
            w_dec: var("w_dec", &[m, w]),
            b_dec: var("b_dec", &[w]),
            threshold: -1.0,
        };
        let xs = floats(&case["x"]);
        let rows = xs.len() / w;
        let x = Tensor::from_vec(xs, (rows, w), &dev).unwrap();
        let settings = StepSettings {
            k: case["k"].as_u64().unwrap() as usize,
            k_aux: case["k_aux"].as_u64().unwrap() as usize,
            dead: case["dead"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect(),
            auxk_alpha: case["auxk_alpha"].as_f64().unwrap() as f32,
            l1: case["l1"].as_f64().unwrap() as f32,
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if sparsity == Sparsity::BatchTopK {
            // The sparse CPU trainer (diffsql-kernels) computes the same step.
            let fresh = SparseCoder {
                spec,
                w_enc: var("w_enc", &[w, m]),
                b_enc: var("b_enc", &[m]),
                w_dec: var("w_dec", &[m, w]),
                b_dec: var("b_dec", &[w]),
                threshold: -1.0,
            };
            let mut adam = Adam::new(&fresh.vars()).unwrap();
            let mut host = HostTrainer::new(&fresh, &adam).unwrap();
            let stats = host
                .step(
                    &fresh,
                    &adam,
                    &floats(&case["x"]),
                    &settings,
                    case["lr"].as_f64().unwrap(),
                )
                .unwrap();
            host.store(&fresh, &mut adam).unwrap();
            assert_close(
                &format!("{name} sparse loss"),
                &[stats.loss],
                &[case["loss"].as_f64().unwrap() as f32],
                1e-5,
            );
            assert_close(
                &format!("{name} sparse auxk"),
                &[stats.auxk],
                &[case["auxk"].as_f64().unwrap() as f32],
                1e-5,
            );
            assert_eq!(fresh.vars().len(), SparseCoder::VAR_NAMES.len());
            for (key, var) in SparseCoder::VAR_NAMES.iter().zip(fresh.vars()) {
                assert_close(
                    &format!("{name} {key} after one sparse Adam step"),
                    &flat(var.as_tensor()),
                    &floats(&case["after_step"][key]),
                    1e-5,
                );
            }
        }
        assert_close(
            &format!("{name} activations"),
            &flat(&coder.activations(&x).unwrap()),
            &floats(&case["activations"]),
            1e-5,
        );
        let (loss, stats) = coder.loss(&x, &settings).unwrap();
        assert_close(
            &format!("{name} loss"),
            &[stats.loss],
            &[case["loss"].as_f64().unwrap() as f32],
            1e-5,
        );
        assert_close(
            &format!("{name} l2"),
            &[stats.l2],
            &[case["l2"].as_f64().unwrap() as f32],
            1e-5,
        );
        assert_close(
            &format!("{name} auxk"),
            &[stats.auxk],
            &[case["auxk"].as_f64().unwrap() as f32],
            1e-5,
        );
        if sparsity == Sparsity::L1 {
            assert_close(
                &format!("{name} penalty"),
                &[stats.sparsity_loss],
                &[case["penalty"].as_f64().unwrap() as f32],
                1e-5,
            );
        } else {
            assert!(
                stats.auxk > 0.0,
                "{name}: the case has dead latents, so the auxiliary loss is used"
            );
            let codes: Vec<f32> = floats(&case["codes"]);
            let selected = codes.iter().filter(|c| **c > 0.0).count();
            assert!((stats.l0 * rows as f32 - selected as f32).abs() < 0.5, "{name}: L0");
        }
        let mut grads = loss.backward().unwrap();
        coder.project_decoder_gradient(&mut grads).unwrap();
        let mut adam = Adam::new(&coder.vars()).unwrap();
        adam.step(&coder.vars(), &grads, case["lr"].as_f64().unwrap()).unwrap();
        coder.normalise_decoder().unwrap();
        assert_eq!(coder.vars().len(), SparseCoder::VAR_NAMES.len());
        for (key, var) in SparseCoder::VAR_NAMES.iter().zip(coder.vars()) {
            assert_close(
                &format!("{name} {key} after one Adam step"),
                &flat(var.as_tensor()),
                &floats(&case["after_step"][key]),
                1e-5,
            );
        }
    }
}

mod planted {
    use diffsql_core::cache::layout::CacheLayout;
    use diffsql_core::cache::planted::{self, PlantedSpec, PlantedTruth};
    use diffsql_core::cache::synth::SynthSpec;
    use diffsql_core::config::{DictionaryKind, LayerSpec, TrainConfig};
    use diffsql_train::store;
    use diffsql_train::{ensure, Outcome, TrainRequest};
    use diffsql_udfs::vector::ElementType;

    pub const LAYER: i32 = 1;

    /// A planted cache: 6 shared and 4 ft-only unit directions in d = 32, 16,384 tokens.
    pub fn cache(dir: &std::path::Path) -> (CacheLayout, PlantedTruth) {
        let layout = CacheLayout::new(dir);
        let spec = PlantedSpec {
            cache: SynthSpec {
                model: "planted".into(),
                organisms: vec!["caps".into()],
                layers: vec![LAYER],
                tokens: 16_384,
                seq_len: 64,
                d_model: 32,
                dtype: ElementType::Float32,
                seed: 3,
                ..SynthSpec::default()
            },
            shared: 6,
            ft_only: 4,
            shared_rate: 1.0 / 6.0,
            noise: 0.02,
        };
        let truth = planted::write(&layout, &spec).unwrap();
        (layout, truth)
    }

    /// Settings scaled down for d = 32 and 16k tokens (the toolkit's are for d in the thousands and 150M).
    pub fn config(kind: DictionaryKind) -> TrainConfig {
        let mut c: TrainConfig = toml::from_str(&format!("kind = \"{}\"", kind.name())).unwrap();
        c.layer = LayerSpec::Index(LAYER as i64);
        c.expansion = 4;
        // ft − base holds 1 planted feature per token on average; (base, ft) 1 + 6 × 1/6.
        c.k = if kind == DictionaryKind::Crosscoder { 2 } else { 1 };
        c.batch_size = 256;
        c.lr = 3e-3;
        c.warmup_steps = 20;
        c.epochs = if kind == DictionaryKind::Crosscoder { 16 } else { 6 };
        c.dead_tokens = 4096;
        c.validation_fraction = 0.1;
        c.checkpoint_every = 1000;
        c.shuffle_buffer_rows = 4096;
        c.components = 4;
        c
    }

    pub fn request(config: TrainConfig) -> TrainRequest {
        TrainRequest {
            model: "planted".into(),
            organism: "caps".into(),
            layer: LAYER,
            config,
            device: candle_core::Device::Cpu,
            progress: false,
            stop_after_steps: None,
        }
    }

    pub fn train(layout: &CacheLayout, config: TrainConfig) -> store::DictionaryManifest {
        match ensure(layout, &request(config)).unwrap() {
            Outcome::Trained(m) => m,
            other => panic!("expected a trained dictionary, got {other:?}"),
        }
    }

    pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            dot / (na * nb)
        }
    }

    /// For `direction`, the latent whose `column` decoder vector is most aligned with it: (latent, cosine).
    pub fn best_latent(
        batch: &datafusion::arrow::array::RecordBatch,
        column: &str,
        d: usize,
        direction: &[f32],
    ) -> (usize, f32) {
        let values = store::column_values(batch, column).unwrap();
        values
            .chunks_exact(d)
            .map(|v| cosine(v, direction))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }
}

/// The crosscoder finds every planted ft-only direction (ft decoder cosine >= 0.9) and classes it ft-only
/// (relative decoder norm < 0.1), and every shared one in both decoders, classed shared (0.3 .. 0.7).
#[test]
fn crosscoder_recovers_planted_ft_only_and_shared_directions() {
    use diffsql_core::config::DictionaryKind;
    let dir = tempfile::tempdir().unwrap();
    let (layout, truth) = planted::cache(dir.path());
    let manifest = planted::train(&layout, planted::config(DictionaryKind::Crosscoder));
    let latents = diffsql_train::store::read_latents(&layout, &manifest).unwrap();
    let rel = diffsql_train::store::scalar_values(&latents, "rel_norm").unwrap();
    let d = 32;
    eprintln!("validation {:?}", manifest.validation);
    for (j, v) in truth.ft_only.iter().enumerate() {
        let (latent, cos) = planted::best_latent(&latents, "dec_ft", d, v);
        eprintln!(
            "ft-only {j}: latent {latent} cosine {cos:.3} rel_norm {:.3}",
            rel[latent]
        );
        assert!(cos >= 0.9, "ft-only direction {j}: best ft decoder cosine {cos}");
        assert!(
            rel[latent] < 0.1,
            "ft-only direction {j}: latent {latent} has relative norm {}",
            rel[latent]
        );
    }
    // A shared direction: the latent best aligned on both sides together.
    let dec_base = diffsql_train::store::column_values(&latents, "dec_base").unwrap();
    let dec_ft = diffsql_train::store::column_values(&latents, "dec_ft").unwrap();
    let mut failures = Vec::new();
    for (j, u) in truth.shared.iter().enumerate() {
        let (latent, cos_base, cos_ft) = dec_base
            .chunks_exact(d)
            .zip(dec_ft.chunks_exact(d))
            .map(|(b, f)| (planted::cosine(b, u), planted::cosine(f, u)))
            .enumerate()
            .map(|(l, (b, f))| (l, b, f))
            .max_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)))
            .unwrap();
        eprintln!(
            "shared {j}: latent {latent} cosine base {cos_base:.3} ft {cos_ft:.3} rel_norm {:.3}",
            rel[latent]
        );
        if cos_base < 0.9 || cos_ft < 0.9 || !(0.3..0.7).contains(&rel[latent]) {
            failures.push(j);
        }
    }
    assert!(
        failures.is_empty(),
        "shared directions not found as shared latents: {failures:?}"
    );
    assert!(
        manifest.validation.fve > 0.8,
        "held-out FVE {}",
        manifest.validation.fve
    );
    assert!(manifest.threshold.is_some_and(|t| t > 0.0), "a threshold was learned");
}

/// The SAE on ft − base finds every planted difference direction (decoder cosine >= 0.9).
#[test]
fn sae_on_differences_recovers_the_planted_directions() {
    use diffsql_core::config::DictionaryKind;
    let dir = tempfile::tempdir().unwrap();
    let (layout, truth) = planted::cache(dir.path());
    let manifest = planted::train(&layout, planted::config(DictionaryKind::SaeDifference));
    let latents = diffsql_train::store::read_latents(&layout, &manifest).unwrap();
    for (j, v) in truth.ft_only.iter().enumerate() {
        let (latent, cos) = planted::best_latent(&latents, "dec", 32, v);
        eprintln!("difference direction {j}: latent {latent} cosine {cos:.3}");
        assert!(cos >= 0.9, "difference direction {j}: best decoder cosine {cos}");
    }
    assert!(
        manifest.validation.fve > 0.8,
        "held-out FVE {}",
        manifest.validation.fve
    );
}

/// PCA's top 4 components span the 4 planted difference directions (each projects onto their span with
/// norm >= 0.9), and they explain almost all held-out variance.
#[test]
fn pca_top_components_span_the_planted_directions() {
    use diffsql_core::config::DictionaryKind;
    let dir = tempfile::tempdir().unwrap();
    let (layout, truth) = planted::cache(dir.path());
    let manifest = planted::train(&layout, planted::config(DictionaryKind::Pca));
    let latents = diffsql_train::store::read_latents(&layout, &manifest).unwrap();
    let components = diffsql_train::store::column_values(&latents, "dec").unwrap();
    for (j, v) in truth.ft_only.iter().enumerate() {
        let projected: f32 = components
            .chunks_exact(32)
            .map(|c| c.iter().zip(v).map(|(a, b)| a * b).sum::<f32>().powi(2))
            .sum::<f32>()
            .sqrt();
        assert!(
            projected >= 0.9,
            "direction {j} projects onto the top components with norm {projected}"
        );
    }
    assert!(
        manifest.validation.fve > 0.9,
        "held-out variance explained {}",
        manifest.validation.fve
    );
}

/// A run stopped after a checkpoint resumes where it stopped and ends with exactly the weights of an
/// uninterrupted run; a second request for a finished dictionary is a no-op.
#[test]
fn a_stopped_training_resumes_to_the_same_dictionary_and_a_finished_one_is_a_no_op() {
    use diffsql_core::config::DictionaryKind;
    use diffsql_train::{ensure, Outcome};
    let whole = tempfile::tempdir().unwrap();
    let (layout, _) = planted::cache(whole.path());
    let mut config = planted::config(DictionaryKind::SaeDifference);
    config.epochs = 2;
    config.checkpoint_every = 7;
    let uninterrupted = planted::train(&layout, config.clone());

    let parts = tempfile::tempdir().unwrap();
    let (layout2, _) = planted::cache(parts.path());
    let mut stopped = planted::request(config.clone());
    stopped.stop_after_steps = Some(40);
    match ensure(&layout2, &stopped).unwrap() {
        Outcome::Stopped { step } => assert_eq!(step, 40),
        other => panic!("expected a stop, got {other:?}"),
    }
    let resumed = planted::train(&layout2, config.clone());
    assert_eq!(resumed.steps, uninterrupted.steps);
    assert_eq!(
        resumed.latents_xxh3, uninterrupted.latents_xxh3,
        "resumed weights differ from an uninterrupted run"
    );
    match ensure(&layout2, &planted::request(config.clone())).unwrap() {
        Outcome::Existing(m) => assert_eq!(m.latents_xxh3, resumed.latents_xxh3),
        other => panic!("expected a no-op, got {other:?}"),
    }
    // Other settings under the same name are refused, not silently mixed.
    config.k = 3;
    let err = ensure(&layout2, &planted::request(config)).unwrap_err().to_string();
    assert!(err.contains("exists with other settings"), "{err}");
}

/// Bad input: a layer not in the cache, too few tokens, k above the latents, a damaged latents file, an
/// unknown dictionary: each a one-line error naming the thing and the fix.
#[test]
fn bad_training_input_is_a_one_line_error() {
    use diffsql_core::config::{DictionaryKind, LayerSpec};
    use diffsql_train::ensure;
    let dir = tempfile::tempdir().unwrap();
    let (layout, _) = planted::cache(dir.path());
    let mut r = planted::request(planted::config(DictionaryKind::Crosscoder));
    r.layer = 5;
    r.config.layer = LayerSpec::Index(5);
    let err = format!("{:#}", ensure(&layout, &r).unwrap_err());
    assert!(err.contains("layer 5") && err.contains("cached layers: 1"), "{err}");

    let mut r = planted::request(planted::config(DictionaryKind::SaeDifference));
    r.config.batch_size = 100_000;
    let err = format!("{:#}", ensure(&layout, &r).unwrap_err());
    assert!(err.contains("training tokens") && err.contains("batch_size"), "{err}");

    let mut r = planted::request(planted::config(DictionaryKind::SaeDifference));
    r.config.k = 1000;
    let err = format!("{:#}", ensure(&layout, &r).unwrap_err());
    assert!(err.contains("above the number of latents"), "{err}");

    let mut r = planted::request(planted::config(DictionaryKind::Crosscoder));
    r.config.datasets = vec!["nope".into()];
    let err = format!("{:#}", ensure(&layout, &r).unwrap_err());
    assert!(err.contains("dataset nope is not in"), "{err}");

    let m = planted::train(&layout, planted::config(DictionaryKind::Pca));
    let path = diffsql_train::store::dictionary_dir(&layout, &m.id).join("latents.parquet");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    // `diffsql check` finds it, and --repair removes it (the method then trains it again).
    let (checked, damaged) = diffsql_train::store::check(&layout, false).unwrap();
    assert_eq!((checked, damaged.len()), (1, 1));
    assert!(
        damaged[0].problem.contains("does not match its manifest"),
        "{}",
        damaged[0].problem
    );
    let err = format!("{:#}", diffsql_train::store::read_latents(&layout, &m).unwrap_err());
    assert!(
        err.contains("does not match its manifest") && err.contains("train it again"),
        "{err}"
    );

    diffsql_train::store::check(&layout, true).unwrap();
    assert!(diffsql_train::store::list(&layout).unwrap().is_empty());
    assert!(!diffsql_train::store::dictionary_dir(&layout, &m.id).exists());
    planted::train(&layout, planted::config(DictionaryKind::Pca));
    let err = format!("{:#}", diffsql_train::store::resolve(&layout, "nope").unwrap_err());
    assert!(
        err.contains("unknown dictionary \"nope\"") && err.contains("planted/caps/pca_L1"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

/// The one-pass covariance PCA equals numpy (`np.cov`, `np.linalg.eigh` in float64) on correlated rows with a
/// large offset: mean and covariance to 1e-6 relative, variances and components to 1e-5.
#[test]
fn pca_equals_numpy() {
    use diffsql_train::pca::Covariance;
    let text = std::fs::read_to_string("tests/fixtures/dictionary/pca_reference.json").unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let d = r["d"].as_u64().unwrap() as usize;
    let x = floats(&r["x"]);
    let mut cov = Covariance::new(d);
    // In uneven pieces, as batches arrive.
    for piece in x.chunks(37 * d) {
        cov.add(piece).unwrap();
    }
    let (mean, c) = cov.finish().unwrap();
    let f64s = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    for (what, got, want) in [("mean", mean, f64s(&r["mean"])), ("covariance", c, f64s(&r["cov"]))] {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what}: {g} vs numpy {w}");
        }
    }
    let p = cov.components(0).unwrap();
    let variance: Vec<f32> = p.variance.iter().map(|v| *v as f32).collect();
    let ratio: Vec<f32> = p.ratio.iter().map(|v| *v as f32).collect();
    assert_close("variance", &variance, &floats(&r["variance"]), 1e-5);
    assert_close("ratio", &ratio, &floats(&r["ratio"]), 1e-5);
    // Eigenvectors are defined up to sign (diffsql orients them along the mean): compare each up to sign.
    let want = floats(&r["components"]);
    assert_eq!(p.vectors.len(), want.len(), "components: length");
    for (c, (got, want)) in p.vectors.chunks_exact(d).zip(want.chunks_exact(d)).enumerate() {
        let sign = if got.iter().zip(want).map(|(a, b)| a * b).sum::<f32>() < 0.0 {
            -1.0
        } else {
            1.0
        };
        let got: Vec<f32> = got.iter().map(|v| v * sign).collect();
        assert_close(&format!("component {c}"), &got, want, 1e-5);
    }
}

/// The L1 crosscoder (the paper's other variant, trained with candle's autograd) also finds the planted ft-only
/// directions and classes them ft-only.
#[test]
fn l1_crosscoder_finds_the_planted_ft_only_directions() {
    use diffsql_core::config::{DictionaryKind, SparsityKind};
    let dir = tempfile::tempdir().unwrap();
    let (layout, truth) = planted::cache(dir.path());
    let mut config = planted::config(DictionaryKind::Crosscoder);
    config.sparsity = SparsityKind::L1;
    // The L1 weight scales with the normalisation (inputs at mean squared norm d_model): 1.0 gives L0 ≈ 5 here.
    config.l1 = 1.0;
    config.epochs = 6;
    let manifest = planted::train(&layout, config);
    assert_eq!(manifest.threshold, None, "an L1 crosscoder has no BatchTopK threshold");
    let latents = diffsql_train::store::read_latents(&layout, &manifest).unwrap();
    let rel = diffsql_train::store::scalar_values(&latents, "rel_norm").unwrap();
    eprintln!("L1 validation {:?}", manifest.validation);
    for (j, v) in truth.ft_only.iter().enumerate() {
        let (latent, cos) = planted::best_latent(&latents, "dec_ft", 32, v);
        eprintln!(
            "L1 ft-only {j}: latent {latent} cosine {cos:.3} rel_norm {:.3}",
            rel[latent]
        );
        assert!(
            cos >= 0.9 && rel[latent] < 0.1,
            "ft-only direction {j}: cosine {cos}, relative norm {}",
            rel[latent]
        );
    }
}
