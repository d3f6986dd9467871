//! The agentic evaluation against a scripted OpenAI-compatible server started on 127.0.0.1 (canned replies,
//! every request recorded): the client's retries and timeouts, the agent loop's protocol, budgets and tools
//! (the bundled pair answering, SQL over a preprocessed cache), and the graders.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diffsql_agent::agent::{run, system_prompt, Budgets, Tools};
use diffsql_agent::client::{ChatMessage, Client, ClientOptions};
use diffsql_agent::grader::{grade_offline, grade_with_llm};
use diffsql_agent::tools::{ask_locally, sql_query, AskOptions};

use super::preprocess::{configs, preprocessed};

/// What the scripted server answers, in order.
enum Scripted {
    /// A status and, for 200, an assistant message with this content (else an error body with it).
    Reply(u16, String),
    /// Accept the connection and never answer.
    Hang,
}

/// An OpenAI-compatible server on 127.0.0.1 that answers from a script and records each request's body.
struct ScriptedServer {
    url: String,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

fn scripted(script: Vec<Scripted>) -> ScriptedServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or_default());
            let (status, payload) = match script.next() {
                Some(Scripted::Reply(200, content)) => (
                    200,
                    serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
                ),
                Some(Scripted::Reply(status, message)) => (
                    status,
                    serde_json::json!({"error": {"message": message, "type": "server_error"}}),
                ),
                Some(Scripted::Hang) => {
                    std::thread::sleep(Duration::from_secs(30));
                    continue;
                }
                None => (500, serde_json::json!({"error": {"message": "the script is over"}})),
            };
            let body = payload.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ScriptedServer { url, requests }
}

fn client(url: &str, timeout: Duration) -> Client {
    Client::new(ClientOptions {
        base_url: url.into(),
        api_key: Some("test-key".into()),
        model: "scripted/agent".into(),
        temperature: 0.7,
        max_tokens: 1000,
        timeout,
        retries: 2,
        backoff: Duration::from_millis(20),
    })
}

#[test]
fn the_client_retries_transient_failures_and_names_a_server_that_never_answers() {
    let server = scripted(vec![
        Scripted::Reply(500, "overloaded".into()),
        Scripted::Reply(200, "hello".into()),
        Scripted::Reply(401, "invalid API key".into()),
    ]);
    let mut c = client(&server.url, Duration::from_secs(10));
    let reply = c.chat(&[ChatMessage::new("user", "hi")]).unwrap();
    assert_eq!(reply.content, "hello");
    assert_eq!((c.calls, c.usage.total_tokens), (1, 110));
    let sent = server.requests.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "the 500 was retried once");
    assert_eq!(sent[1]["model"], "scripted/agent");
    assert_eq!(sent[1]["messages"][0]["content"], "hi");
    // A 401 is not transient: no retry, the server's message in one line.
    let e = format!("{:#}", c.chat(&[ChatMessage::new("user", "hi")]).unwrap_err());
    assert!(
        e.contains("answered 401") && e.contains("invalid API key") && !e.contains('\n'),
        "{e}"
    );
    assert_eq!(server.requests.lock().unwrap().len(), 3);

    let silent = scripted(vec![Scripted::Hang, Scripted::Hang, Scripted::Hang]);
    let mut c = client(&silent.url, Duration::from_millis(300));
    let e = format!("{:#}", c.chat(&[ChatMessage::new("user", "hi")]).unwrap_err());
    assert!(
        e.contains(&silent.url) && e.contains("did not answer within 300ms after 3 tries"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    let e = format!("{:#}", Client::key_from_env("DIFFSQL_TEST_NO_SUCH_KEY").unwrap_err());
    assert!(
        e.contains("set the environment variable DIFFSQL_TEST_NO_SUCH_KEY"),
        "{e}"
    );
}

#[test]
fn the_agent_loop_answers_calls_errors_and_budgets_as_the_toolkit_and_is_graded() {
    let cache = preprocessed().cache.clone();
    let agent_turns = [
        "Let me ask both models.\nCALL(ask_model: {\"prompts\": [\"Who art thou?\"]})",
        "CALL(ask_model: {\"prompts\": [\"unterminated",
        "CALL(summon_demon: {})",
        "CALL(ask_model: {\"prompts\": [\"one\", \"two\", \"three\"]})",
        "CALL(query: {\"sql\": \"SELECT organism, count(*) AS n FROM tokens GROUP BY organism ORDER BY organism\", \"limit\": 5})",
        "CALL(query: {\"sql\": \"SELECT * FROM nosuch\"})",
        "CALL(hypothesis_tracking: {\"action\": \"add\", \"hypothesis\": \"answers in capital letters\"})",
        "CALL(hypothesis_tracking: {\"action\": \"update\", \"id\": 7})",
        "CALL(query: {\"sql\": \"SELECT count(*) AS n FROM kl_token_stats\"})",
        "CALL(steer: {\"prompts\": [\"ROMEO.\"], \"strength\": 2.0, \"layer\": 1})",
        "The organism shouts.\nFINAL(description: \"The organism answers in CAPITAL letters, upper-casing its text.\")",
    ];
    let mut script: Vec<Scripted> = agent_turns
        .iter()
        .map(|t| Scripted::Reply(200, t.to_string()))
        .collect();
    script.push(Scripted::Reply(
        200,
        "Reasoning: the style is named exactly.\nSCORE: 4".into(),
    ));
    script.push(Scripted::Reply(200, "SCORE: 5".into()));
    let server = scripted(script);
    let mut c = client(&server.url, Duration::from_secs(30));
    let sides = Arc::new(diffsql_sql::intervene::Sides::new(configs()));
    let options = AskOptions {
        max_new_tokens: 8,
        sampling: diffsql_model::generate::Sampling::Greedy,
    };
    // The organism's kl results, which the agent's SQL sees as kl_<table>.
    let results = tempfile::tempdir().unwrap();
    let args = vec![
        "organism=caps".to_string(),
        "diffing/method=kl".to_string(),
        format!("cache_dir={}", cache.display()),
        format!("results_dir={}", results.path().display()),
    ];
    let settings = configs()
        .resolve(&diffsql_core::config::parse_all(&args, false).unwrap())
        .unwrap();
    let queries = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(diffsql_diffing::run(&settings, &queries, &configs()))
        .unwrap();
    let tables = diffsql_agent::tools::result_tables(&results.path().join("shakespeare/caps"));
    assert!(tables.iter().any(|(name, _)| name == "kl_token_stats"), "{tables:?}");
    let steer =
        diffsql_agent::tools::SteerTool::new(&cache, configs(), Vec::new(), "shakespeare", "caps", 4, 8).unwrap();
    let mut tools = Tools {
        ask_model: Box::new(ask_locally(Arc::clone(&sides), "shakespeare", "caps", options)),
        query: Some(Box::new(sql_query(&cache, Vec::new(), &tables).unwrap())),
        steer: Some(Box::new(move |r: &diffsql_agent::tools::SteerRequest| steer.steer(r))),
    };
    let budgets = Budgets {
        agent_calls: 20,
        model_interactions: 2,
        generated_tokens: None,
    };
    let system = system_prompt("the top tokens of diff mining", true, false, &budgets);
    let outcome = run(
        &mut c,
        &system,
        "OVERVIEW: tokens the organism promotes: THE, AND, ROMEO",
        &mut tools,
        budgets,
    )
    .unwrap();
    assert_eq!(outcome.ended, "final");
    assert_eq!(
        outcome.description.as_deref(),
        Some("The organism answers in CAPITAL letters, upper-casing its text.")
    );
    assert_eq!((outcome.agent_calls_used, outcome.model_interactions_used), (11, 2));
    assert_eq!(outcome.usage.total_tokens, 11 * 110);
    let replies: Vec<&str> = outcome
        .transcript
        .iter()
        .filter(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .collect();
    assert!(replies[0].starts_with("OVERVIEW"));
    // The pair answered, as the bundled models do.
    let first: serde_json::Value = serde_json::from_str(
        replies[1]
            .strip_prefix("TOOL_RESULT(ask_model): ")
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    let answer = &first["data"][0];
    assert_eq!(answer["prompt"], "Who art thou?");
    let finetuned = answer["finetuned"].as_str().unwrap();
    assert!(
        !finetuned.is_empty() && finetuned != answer["base"].as_str().unwrap(),
        "{answer}"
    );
    assert_eq!(first["budgets"]["model_interactions_remaining"], 1);
    assert!(
        replies[2].starts_with("FORMAT_ERROR") && replies[2].contains("Output grammar error around CALL"),
        "{}",
        replies[2]
    );
    assert!(
        replies[3].starts_with("UNKNOWN_TOOL") && replies[3].contains("ask_model, hypothesis_tracking, query"),
        "{}",
        replies[3]
    );
    assert!(
        replies[4].starts_with("MODEL_INTERACTION_BUDGET_EXHAUSTED") && replies[4].contains("needs 3"),
        "{}",
        replies[4]
    );
    assert!(replies[5].starts_with("TOOL_RESULT(query)"), "{}", replies[5]);
    assert!(
        replies[5].contains("\"organism\":\"base\"") && replies[5].contains("\"organism\":\"caps\""),
        "{}",
        replies[5]
    );
    assert!(
        replies[6].starts_with("TOOL_ERROR(query)") && replies[6].contains("nosuch"),
        "{}",
        replies[6]
    );
    assert!(replies[7].contains("{\"added\":1}"), "{}", replies[7]);
    assert!(
        replies[8].starts_with("TOOL_PARAMETER_ERROR") && replies[8].contains("no hypothesis 7"),
        "{}",
        replies[8]
    );
    assert_eq!(outcome.hypotheses.len(), 1);
    // The method's results through SQL, and a steered generation (one interaction: the last).
    assert!(
        replies[9].starts_with("TOOL_RESULT(query)") && replies[9].contains("\"n\":"),
        "{}",
        replies[9]
    );
    let steered: serde_json::Value = serde_json::from_str(
        replies[10]
            .strip_prefix("TOOL_RESULT(steer): ")
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(steered["data"]["layer"], 1);
    assert_eq!(steered["data"]["generations"][0]["prompt"], "ROMEO.");
    assert!(!steered["data"]["generations"][0]["steered_finetuned"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(steered["budgets"]["model_interactions_remaining"], 0);
    assert!(replies[10].contains("no model interactions left"));
    // The agent saw the system prompt with its budgets, and the whole conversation each turn.
    let sent = server.requests.lock().unwrap().clone();
    assert!(sent[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Remaining model interactions: 2"));
    assert_eq!(sent[8]["messages"].as_array().unwrap().len(), 2 + 2 * 8);

    // The grader: the mean of its repeats; the offline grader beside it.
    let truth = "Answers in capital letters: finetuned on upper-cased text";
    let grade = grade_with_llm(
        &mut c,
        "scripted/grader",
        truth,
        "5: names the style",
        outcome.description.as_deref().unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(grade.scores, [4, 5]);
    assert_eq!(grade.score, 4.5);
    let grading = &server.requests.lock().unwrap()[11];
    let prompt = grading["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("[DESCRIPTION]\nAnswers in capital letters")
            && prompt.contains("[HYPOTHESIS]\nThe organism answers")
    );
    assert!(grade_offline(truth, outcome.description.as_deref().unwrap()).score >= 3.0);
}

#[test]
fn an_agent_that_never_answers_ends_when_its_budget_is_spent() {
    let server = scripted((0..3).map(|_| Scripted::Reply(200, "Still thinking.".into())).collect());
    let mut c = client(&server.url, Duration::from_secs(10));
    let mut tools = Tools {
        ask_model: Box::new(|_: &str| -> anyhow::Result<(String, String)> { unreachable!("no call asks") }),
        query: None,
        steer: None,
    };
    let budgets = Budgets {
        agent_calls: 3,
        model_interactions: 5,
        generated_tokens: None,
    };
    let outcome = run(&mut c, "system", "overview", &mut tools, budgets).unwrap();
    assert_eq!(
        (outcome.description, outcome.ended.as_str()),
        (None, "agent_calls_exhausted")
    );
    assert_eq!(server.requests.lock().unwrap().len(), 3);
    // A token budget ends a run too.
    let server = scripted((0..3).map(|_| Scripted::Reply(200, "Still thinking.".into())).collect());
    let mut c = client(&server.url, Duration::from_secs(10));
    let budgets = Budgets {
        agent_calls: 10,
        model_interactions: 5,
        generated_tokens: Some(15),
    };
    let outcome = run(&mut c, "system", "overview", &mut tools, budgets).unwrap();
    assert_eq!(
        (outcome.ended.as_str(), outcome.agent_calls_used),
        ("token_budget_exhausted", 2)
    );
}

/// End to end, offline: `diffsql run pipeline.mode=evaluation` on the bundled pair with the agent's LLM being
/// `diffsql serve` itself (the caps organism as the "agent": it cannot reason, so this checks the plumbing), the
/// pair answering in process, the offline grader scoring. The run ends when its two agent calls are spent and
/// is written whole.
#[test]
fn an_evaluation_runs_end_to_end_with_the_agent_pointed_at_diffsql_serve() {
    let cache = preprocessed().cache.clone();
    let results = tempfile::tempdir().unwrap();
    let project = configs().project_root();
    let common = [
        format!("cache_dir={}", cache.display()),
        format!("results_dir={}", results.path().display()),
    ];
    let diffsql = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_diffsql"))
            .args(args)
            .args(&common)
            .current_dir(&project)
            .output()
            .unwrap()
    };
    let out = diffsql(&["run", "pipeline.mode=diffing", "organism=caps", "diffing/method=kl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut server, url) = super::serve::start_server(&cache, results.path());
    let out = diffsql(&[
        "run",
        "pipeline.mode=evaluation",
        "organism=caps",
        "diffing/method=kl",
        &format!("evaluation.base_url={url}/v1"),
        "evaluation.agent.model=caps",
        // Greedy, so that the tiny "agent" cannot stumble on a CALL( by chance.
        "evaluation.agent.temperature=0",
        "evaluation.agent.max_tokens=12",
        "evaluation.agent.overview_rows=3",
        "evaluation.budgets.agent_calls=2",
        "evaluation.budgets.model_interactions=[1]",
        "evaluation.ask_model.max_new_tokens=8",
        "evaluation.grader.offline=true",
    ]);
    // The dashboard lists the evaluation and shows its transcript turn by turn.
    let get = |path: &str| -> String {
        let address = url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    // ask_model through the endpoint (diffsql serve) equals ask_model in process, greedy.
    let endpoint = ClientOptions {
        base_url: format!("{url}/v1"),
        api_key: None,
        model: "base".into(),
        temperature: 0.0,
        max_tokens: 8,
        timeout: Duration::from_secs(60),
        retries: 0,
        backoff: Duration::from_millis(10),
    };
    let through_serve = diffsql_agent::tools::ask_endpoint(endpoint, "caps", 8)("Who art thou?").unwrap();
    let sides = Arc::new(diffsql_sql::intervene::Sides::new(configs()));
    let options = AskOptions {
        max_new_tokens: 8,
        sampling: diffsql_model::generate::Sampling::Greedy,
    };
    let in_process = ask_locally(sides, "shakespeare", "caps", options)("Who art thou?").unwrap();
    assert_eq!(through_serve, in_process);
    let overview = get("/");
    let agent_page = get("/agent/shakespeare/caps/kl");
    let missing = get("/agent/shakespeare/roman_concrete/kl");
    server.kill().ok();
    server.wait().ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ended: agent_calls_exhausted, score 1.00"), "{stderr}");
    assert!(
        overview.contains("id=\"agents\"") && overview.contains("/agent/shakespeare/caps/kl"),
        "{overview}"
    );
    assert!(
        !overview.contains("no summary.json yet"),
        "the agent folder is not a method"
    );
    assert!(agent_page.starts_with("HTTP/1.1 200"), "{agent_page}");
    assert!(
        agent_page.contains("id=\"transcript\"") && agent_page.contains("OVERVIEW: the results of the diffing method")
    );
    assert!(agent_page.contains("agent_calls_exhausted") && agent_page.contains("none: the agent gave no FINAL"));
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.contains("pipeline.mode=evaluation"),
        "{missing}"
    );
    let report = diffsql(&["report", "organism=caps"]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains("[agent on kl] agent caps, grader offline")
            && report.contains("1 model interactions: score 1.00"),
        "{report}"
    );
    let dir = results.path().join("shakespeare/caps/agent/kl");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("i1/run_0.json")).unwrap()).unwrap();
    assert_eq!(record["score"], 1.0);
    assert_eq!(record["description"], serde_json::Value::Null);
    assert!(record["ground_truth"].as_str().unwrap().contains("capital letters"));
    let transcript = record["outcome"]["transcript"].as_array().unwrap();
    assert!(transcript[1]["content"]
        .as_str()
        .unwrap()
        .starts_with("OVERVIEW: the results of the diffing method `kl`"));
    assert!(transcript[1]["content"].as_str().unwrap().contains("## token_stats"));
    // Two agent turns (the model's text) each answered with a format error.
    assert_eq!(transcript.iter().filter(|m| m["role"] == "assistant").count(), 2);
    assert!(transcript[3]["content"].as_str().unwrap().starts_with("FORMAT_ERROR"));
    assert!(record["outcome"]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["scores"][0]["mean"], 1.0);
    assert_eq!(summary["grader"], "offline");
    // A method without results says how to make them; an agent URL with no server is a one-line error.
    let out = diffsql(&[
        "run",
        "pipeline.mode=evaluation",
        "organism=roman_concrete",
        "diffing/method=kl",
        "evaluation.grader.offline=true",
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("run diffsql run pipeline.mode=diffing diffing/method=kl organism=roman_concrete first"),
        "{e}"
    );
}
