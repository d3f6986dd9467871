//! The dashboard's pages answered by its router (no socket, no browser: tests/browser/ drives Chromium), on the
//! small bundled-pair cache with the kl method's results; contexts checked against the `tokens` table read through
//! SQL.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float32Type;
use diffsql_core::config::parse_all;
use tower::ServiceExt;

use super::preprocess::{configs, preprocessed};

struct Dashboard {
    _results: tempfile::TempDir,
    router: axum::Router,
    cache: std::path::PathBuf,
}

fn dashboard() -> Dashboard {
    let cache = preprocessed().cache.clone();
    let results = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "diffing/method=kl".into(),
        "organism=caps".into(),
        format!("cache_dir={}", cache.display()),
        format!("results_dir={}", results.path().display()),
    ];
    let settings = configs().resolve(&parse_all(&args, false).unwrap()).unwrap();
    let queries = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    runtime()
        .block_on(diffsql_diffing::run(&settings, &queries, &configs()))
        .unwrap();
    Dashboard {
        router: router_over(&cache, results.path(), &settings.model.name),
        _results: results,
        cache,
    }
}

/// The dashboard's router over a cache and a results folder, as `diffsql serve` builds it.
fn router_over(cache: &std::path::Path, results: &std::path::Path, model: &str) -> axum::Router {
    let state = diffsql_serve::AppState::new(diffsql_serve::ServeOptions {
        address: [127, 0, 0, 1].into(),
        port: 0,
        cache_dir: cache.to_path_buf(),
        results_dir: results.to_path_buf(),
        configs: configs(),
        model: model.into(),
        overrides: Vec::new(),
        query_timeout: Duration::from_secs(30),
        open: false,
    })
    .unwrap();
    diffsql_serve::router(Arc::new(state))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Dashboard {
    fn request(&self, request: Request<Body>) -> (StatusCode, String) {
        runtime().block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            assert!(response.headers().contains_key("server-timing"));
            let body = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    }

    fn get(&self, path: &str) -> (StatusCode, String) {
        self.request(Request::get(path).body(Body::empty()).unwrap())
    }
}

/// The texts of the `<span class="tok…">` elements of the first context in `html`, and which one is the target.
fn first_context(html: &str) -> (Vec<String>, Option<usize>) {
    let start = html.find("<span class=\"ctx\">").expect("a context");
    let end = start + html[start..].find("</span></span>").expect("context end");
    let mut tokens = Vec::new();
    let mut target = None;
    for part in html[start..end].split("<span class=\"tok").skip(1) {
        if part.starts_with(" target") {
            target = Some(tokens.len());
        }
        let text = &part[part.find('>').unwrap() + 1..];
        let text = text.split("</span>").next().unwrap();
        tokens.push(
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        );
    }
    (tokens, target)
}

#[test]
fn dashboard_pages_answer_on_the_bundled_pair() {
    let d = dashboard();
    let (status, overview) = d.get("/");
    assert_eq!(status, StatusCode::OK);
    assert!(overview.contains("Model shakespeare") && overview.contains("/results/shakespeare/caps/kl"));
    for path in [
        "/results/shakespeare/caps/kl",
        "/tokens?organism=caps",
        "/sql",
        "/chat",
        "/assets/app.js",
    ] {
        assert_eq!(d.get(path).0, StatusCode::OK, "{path}");
    }

    // Sorted by kl, descending: the first row is the cache's largest KL.
    let (status, page) = d.get("/results/shakespeare/caps/kl/table/top_tokens?sort=kl&desc=1");
    assert_eq!(status, StatusCode::OK);
    let ctx = diffsql_sql::open_session(&d.cache).unwrap();
    let top = runtime()
        .block_on(async {
            ctx.sql(
                "SELECT dataset, seq_id, pos, kl FROM tokens WHERE organism = 'caps' AND kl IS NOT NULL \
                 ORDER BY kl DESC, dataset, seq_id, pos LIMIT 1",
            )
            .await?
            .collect()
            .await
        })
        .unwrap();
    let kl = top[0].column(3).as_primitive::<Float32Type>().value(0) as f64;
    assert!(
        page.contains(&diffsql_short(kl)),
        "the largest KL {kl} is on the first page"
    );
    // Where the first row is, from its link into the token browser.
    // (minijinja escapes the slash in attributes: href="&#x2f;tokens?…")
    let Some(at) = page.find("tokens?model=") else {
        panic!("no browse link in {}", &page[page.len().saturating_sub(3000)..]);
    };
    let link = &page[at..];
    let link = &link[..link.find('"').unwrap()];
    let param = |name: &str| {
        let at = link.find(&format!("&amp;{name}=")).unwrap() + name.len() + 6;
        link[at..].split('&').next().unwrap().to_string()
    };
    let (dataset, seq, pos): (String, i64, i32) = (
        param("dataset"),
        param("seq").parse().unwrap(),
        param("focus").parse().unwrap(),
    );
    // The first row's context is the cached sequence around its position, the token itself outlined.
    let (tokens, target) = first_context(&page);
    let expected = runtime()
        .block_on(async {
            ctx.sql(&format!(
                "SELECT token FROM tokens WHERE organism = 'caps' AND dataset = '{dataset}' AND seq_id = {seq} \
                 AND pos BETWEEN {} AND {} ORDER BY pos",
                (pos - 12).max(0),
                pos + 12
            ))
            .await?
            .collect()
            .await
        })
        .unwrap();
    let expected: Vec<String> = expected
        .iter()
        .flat_map(|b| {
            let t = b.column(0).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| t.value(i).replace('\n', "↵"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(tokens, expected);
    assert_eq!(target, Some((pos - (pos - 12).max(0)) as usize));

    // The token's statistics as JSON.
    let (status, json) = d.get(&format!(
        "/api/token?model=shakespeare&organism=caps&dataset={dataset}&seq={seq}&pos={pos}"
    ));
    assert_eq!(status, StatusCode::OK);
    let detail: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        (detail["kl"].as_f64().unwrap() - kl).abs() < 1e-6,
        "the first row has the largest KL"
    );
    assert!(!detail["ft_next"].as_array().unwrap().is_empty());
    assert!(!detail["base_next"].as_array().unwrap().is_empty());

    // Coloured by ‖ft − base‖ at a layer (read through the activation partitions' row indexes): the same norm as
    // `diff_norm` in SQL.
    let norms = runtime()
        .block_on(async {
            ctx.sql(&format!(
                "SELECT pos, layer, diff_norm(base, ft) FROM acts WHERE organism = 'caps' AND dataset = '{dataset}' \
                 AND seq_id = {seq} AND pos = {pos} ORDER BY layer DESC LIMIT 1"
            ))
            .await?
            .collect()
            .await
        })
        .unwrap();
    let layer = norms[0]
        .column(1)
        .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
        .value(0);
    let norm = norms[0]
        .column(2)
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .value(0);
    let (status, page) = d.get(&format!(
        "/tokens?organism=caps&dataset={dataset}&seq={seq}&focus={pos}&color=normdiff&layer={layer}"
    ));
    assert_eq!(status, StatusCode::OK);
    let tip = format!("pos {pos} · ‖ft − base‖ at layer {layer} {}", diffsql_short(norm));
    assert!(page.contains(&tip), "{tip} in {page}");
}

/// The page's text of a float (as `page::short_float` writes it: four significant digits).
fn diffsql_short(x: f64) -> String {
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

#[test]
fn dashboard_refuses_writes_and_bad_addresses_with_a_reason() {
    let d = dashboard();
    let post = |sql: &str| {
        let body = format!("q={}", urlencode(sql));
        d.request(
            Request::post("/sql")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    let target = tempfile::tempdir().unwrap();
    let file = target.path().join("out.csv");
    let (status, page) = post(&format!("COPY (SELECT 1) TO '{}'", file.display()));
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("id=\"sql-error\"") && page.contains("read-only"),
        "{page}"
    );
    assert!(!file.exists());
    let (_, page) = post("SELECT organism, count(*) AS n FROM tokens GROUP BY organism ORDER BY organism");
    assert!(!page.contains("sql-error") && page.contains("roman_concrete"), "{page}");
    for (path, status, words) in [
        (
            "/results/shakespeare/nosuch/kl",
            StatusCode::NOT_FOUND,
            "no results for organism",
        ),
        (
            "/results/shakespeare/caps/kl/table/top_tokens?sort=nosuch",
            StatusCode::BAD_REQUEST,
            "no column",
        ),
        (
            "/tokens?organism=caps&color=normdiff",
            StatusCode::BAD_REQUEST,
            "needs a layer",
        ),
        ("/nowhere", StatusCode::NOT_FOUND, "there is no page"),
    ] {
        let (got, page) = d.get(path);
        assert_eq!(got, status, "{path}");
        assert!(page.contains(words), "{path}: {page}");
    }
    // Numbers at the edge of their types page and clamp rather than overflow.
    let (status, _) = d.get(&format!("/tokens?organism=caps&page={}", usize::MAX));
    assert_eq!(status, StatusCode::OK);
    let (_, list) = d.get("/tokens?organism=caps&sort=seq_id");
    let link = &list[list.find("dataset=").unwrap()..];
    let link = &link[..link.find('"').unwrap()];
    let (status, page) = d.get(&format!(
        "/tokens?organism=caps&{}&focus={}",
        link.replace("&amp;", "&"),
        i64::MAX
    ));
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("class=\"tok"), "the last page of tokens: {page}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_token_browser_colours_by_a_dictionary_latent() {
    // A copy of the small cache, so the PCA trained here stays out of the other tests' cache.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    copy_dir(&preprocessed().cache, &cache);
    let results = dir.path().join("results");
    let args: Vec<String> = vec![
        "diffing/method=pca".into(),
        "organism=caps".into(),
        format!("cache_dir={}", cache.display()),
        format!("results_dir={}", results.display()),
    ];
    let settings = configs().resolve(&parse_all(&args, false).unwrap()).unwrap();
    let queries = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    runtime()
        .block_on(diffsql_diffing::run(&settings, &queries, &configs()))
        .unwrap();
    let layout = diffsql_core::cache::CacheLayout::new(&cache);
    let pca = diffsql_train::store::list(&layout).unwrap().pop().expect("the PCA");
    let d = Dashboard {
        router: router_over(&cache, &results, &settings.model.name),
        _results: dir,
        cache: cache.clone(),
    };
    // Component 1's coordinate at position 3 of the first sequence, straight from SQL.
    let ctx = diffsql_sql::open_session(&cache).unwrap();
    let batches = runtime()
        .block_on(async {
            ctx.sql(&format!(
                "SELECT dataset, seq_id, pca_project(vec_sub(ft, base), '{}', 2)[2] AS v FROM acts \
                 WHERE organism = 'caps' AND layer = {} AND pos = 3 ORDER BY dataset, seq_id LIMIT 1",
                pca.id, pca.layer
            ))
            .await?
            .collect()
            .await
        })
        .unwrap();
    let dataset = batches[0].column(0).as_string::<i32>().value(0).to_string();
    let seq = batches[0]
        .column(1)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0);
    let want = batches[0].column(2).as_primitive::<Float32Type>().value(0) as f64;
    let (status, page) = d.get(&format!(
        "/tokens?organism=caps&dataset={dataset}&seq={seq}&color=latent&dictionary={}&latent=1",
        pca.id.name
    ));
    assert_eq!(status, StatusCode::OK, "{page}");
    let label = format!("latent 1 of {}", pca.id.name);
    assert!(
        page.contains(&format!("pos 3 · {label} {}", short_signed(want))),
        "{want} in {page}"
    );
    // The dictionary method's rows link to the sequence coloured by their own latent.
    let (_, method) = d.get("/results/shakespeare/caps/pca");
    assert!(method.contains("color=latent&amp;dictionary="), "{method}");
    let (status, page) = d.get(&format!(
        "/tokens?organism=caps&dataset={dataset}&seq={seq}&color=latent&dictionary={}&latent=999",
        pca.id.name
    ));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("latent 999 is not one"), "{page}");
    let (status, page) = d.get("/tokens?organism=caps&color=latent&dictionary=nosuch&latent=0");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("no dictionary &quot;nosuch&quot;"), "{page}");
}

/// [`diffsql_short`] for any sign.
fn short_signed(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", diffsql_short(-x))
    } else {
        diffsql_short(x)
    }
}

/// `POST /v1/chat/completions` and `GET /v1/models`: OpenAI's shapes, greedy replies equal to `diffsql generate
/// --chat` (the library's side-by-side generation), `stop` and `max_tokens` ending replies, and OpenAI-shaped
/// errors naming the parameter.
#[test]
fn the_pair_answers_openai_chat_completions() {
    let cache = preprocessed().cache.clone();
    let results = tempfile::tempdir().unwrap();
    let router = router_over(&cache, results.path(), "shakespeare");
    let call = |method: &str, path: &str, body: serde_json::Value| -> (StatusCode, serde_json::Value) {
        runtime().block_on(async {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap())
        })
    };
    let (status, models) = call("GET", "/v1/models", serde_json::Value::Null);
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "caps", "roman_concrete"]);

    let prompt = "Who art thou, Romeo?";
    let expected = greedy_chat_replies(prompt);
    let ask = |model: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}],
                                          "temperature": 0, "max_tokens": 12});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        call("POST", "/v1/chat/completions", body)
    };
    for (model, want) in [("base", &expected.base), ("caps", &expected.organism)] {
        let (status, reply) = ask(model, serde_json::json!({}));
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["object"], "chat.completion");
        assert_eq!(reply["model"], model);
        let choice = &reply["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"].as_str().unwrap(), want.as_str(), "{model}");
        let usage = &reply["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 3);
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        if usage["completion_tokens"] == 12 {
            assert_eq!(choice["finish_reason"], "length");
        }
    }
    // A stop sequence inside the greedy reply cuts it there.
    let organism_text = &expected.organism;
    let cut = organism_text
        .char_indices()
        .nth(organism_text.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = organism_text[cut..].chars().take(2).collect();
    let (_, reply) = ask("caps", serde_json::json!({"stop": [stop.clone()]}));
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, &organism_text[..organism_text.find(&stop).unwrap()]);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    // Sampling with a seed is reproducible.
    let sampled = |seed: u64| {
        ask(
            "caps",
            serde_json::json!({"temperature": 0.9, "top_p": 0.95, "seed": seed}),
        )
        .1
    };
    assert_eq!(sampled(7)["choices"][0]["message"], sampled(7)["choices"][0]["message"]);

    for (extra, status, param, needle) in [
        (
            serde_json::json!({"model": "nope"}),
            StatusCode::NOT_FOUND,
            "model",
            "the models are base, caps, roman_concrete",
        ),
        (
            serde_json::json!({"stream": true}),
            StatusCode::BAD_REQUEST,
            "stream",
            "streaming is not supported",
        ),
        (serde_json::json!({"n": 2}), StatusCode::BAD_REQUEST, "n", "only n = 1"),
        (
            serde_json::json!({"max_tokens": 0}),
            StatusCode::BAD_REQUEST,
            "max_tokens",
            "between 1 and",
        ),
        (
            serde_json::json!({"temperature": 3.0}),
            StatusCode::BAD_REQUEST,
            "temperature",
            "between 0 and 2",
        ),
        (
            serde_json::json!({"messages": []}),
            StatusCode::BAD_REQUEST,
            "messages",
            "messages is empty",
        ),
    ] {
        let model = extra
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or("caps")
            .to_string();
        let (got, reply) = ask(&model, extra.clone());
        assert_eq!(got, status, "{extra}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(needle), "{reply}");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
    }
    let (got, reply) = call("POST", "/v1/chat/completions", serde_json::json!("not a request"));
    assert_eq!(got, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"]["code"], "invalid_json");
}

/// From the outside: the official `openai` Python client against `diffsql serve` on a free port gets a
/// completion from the base model and from an organism (greedy: equal to `diffsql generate --chat`) and lists
/// the models.
#[test]
fn the_official_openai_client_talks_to_diffsql_serve() {
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_client,
        "this test needs python3 with the openai package: pip install openai (.ci/run does)"
    );
    let cache = preprocessed().cache.clone();
    let results = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(&cache, results.path());
    let prompt = "Who art thou, Romeo?";
    let program = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0, timeout=120)
out = {"models": [m.id for m in client.models.list()]}
for model in ["base", "caps"]:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": sys.argv[2]}],
                                       temperature=0, max_tokens=12)
    out[model] = r.choices[0].message.content
    out[model + "_usage"] = r.usage.total_tokens
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
except Exception as e:
    out["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#;
    let run = std::process::Command::new("python3")
        .args(["-c", program, &url, prompt])
        .output()
        .unwrap();
    server.kill().ok();
    server.wait().ok();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let expected = greedy_chat_replies(prompt);
    assert_eq!(out["models"], serde_json::json!(["base", "caps", "roman_concrete"]));
    assert_eq!(out["base"].as_str().unwrap(), expected.base);
    assert_eq!(out["caps"].as_str().unwrap(), expected.organism);
    assert!(out["base_usage"].as_u64().unwrap() > 12);
    let error = out["error"].as_str().unwrap();
    assert!(
        error.starts_with("NotFoundError") && error.contains("the models are base, caps"),
        "{error}"
    );
}

/// `diffsql serve` on a free port over `cache` and `results`, and its address (`http://127.0.0.1:PORT`), read
/// from the line it prints; the caller kills it.
pub fn start_server(cache: &std::path::Path, results: &std::path::Path) -> (std::process::Child, String) {
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
        .args(["serve", "--port", "0"])
        .arg(format!("cache_dir={}", cache.display()))
        .arg(format!("results_dir={}", results.display()))
        .current_dir(configs().project_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let url = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
        }
    };
    (server, url)
}

/// The bundled pair's greedy replies to `prompt` as a chat turn (12 new tokens), as `diffsql generate --chat`
/// computes them.
fn greedy_chat_replies(prompt: &str) -> diffsql_model::generation::SideBySide {
    let settings = configs()
        .resolve(&parse_all(&["organism=caps".to_string()], false).unwrap())
        .unwrap();
    let (mut expected, _) = diffsql_model::generation::side_by_side(
        &settings,
        &configs().project_root(),
        &[prompt.to_string()],
        true,
        12,
        diffsql_model::generate::Sampling::Greedy,
    )
    .unwrap();
    expected.remove(0)
}
