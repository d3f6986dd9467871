//! The agent loop, as the reference toolkit runs it: a system prompt describing the tools and budgets, a first
//! message with a method's overview, then turns that end in `CALL(tool: {json})` — answered with
//! `TOOL_RESULT(tool): {"data": …, "budgets": …}` — until `FINAL(description: "…")`. Malformed turns, unknown
//! tools, bad arguments and spent budgets are answered in text, as the toolkit answers them; a run that spends
//! its agent calls or tokens without a FINAL ends without a description, and says why.

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::client::{ChatMessage, Client, Usage};
use super::protocol::{parse_turn, Turn};

/// What a run may spend.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Budgets {
    /// Calls to the agent's LLM.
    pub agent_calls: usize,
    /// Prompts to the pair (each `ask_model` prompt is one).
    pub model_interactions: usize,
    /// Completion tokens of the agent's LLM over the run; `None` for no limit.
    pub generated_tokens: Option<u64>,
}

/// How the pair answers a prompt: the base model's and the organism's replies.
pub type AskModel<'a> = dyn FnMut(&str) -> Result<(String, String)> + 'a;
/// A read-only SQL query over the cache and results, at most `limit` rows, as JSON rows.
pub type Query<'a> = dyn FnMut(&str, usize) -> Result<Value> + 'a;

/// Steered generation: the organism's continuations with the activation difference added.
pub type Steer<'a> = dyn FnMut(&super::tools::SteerRequest) -> Result<Value> + 'a;

/// The tools of a run.
pub struct Tools<'a> {
    pub ask_model: Box<AskModel<'a>>,
    /// `None` for an agent without SQL (the toolkit's own agents).
    pub query: Option<Box<Query<'a>>>,
    /// `None` for an agent without steering.
    pub steer: Option<Box<Steer<'a>>>,
}

/// A hypothesis the agent keeps on its board.
#[derive(Debug, Clone, Serialize)]
pub struct Hypothesis {
    pub id: usize,
    pub hypothesis: String,
    pub status: String,
    pub reasoning: String,
}

/// How a run ended and what it used.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The agent's FINAL description, when it gave one.
    pub description: Option<String>,
    /// `final`, `agent_calls_exhausted` or `token_budget_exhausted`.
    pub ended: String,
    pub agent_calls_used: usize,
    pub model_interactions_used: usize,
    pub usage: Usage,
    pub hypotheses: Vec<Hypothesis>,
    pub transcript: Vec<ChatMessage>,
}

/// The row limit of a `query` call when it gives none, and the most it may ask for.
pub const QUERY_ROWS: usize = 50;
pub const QUERY_MAX_ROWS: usize = 500;

/// The agent's system prompt for these tools and budgets.
pub fn system_prompt(overview_kind: &str, sql: bool, steer: bool, budgets: &Budgets) -> String {
    let steer = if steer {
        "\n- steer: {\"prompts\": [\"...\"], \"strength\": 4.0, \"layer\": 3, \"first\": 1, \"last\": 4} continues each \
         prompt (plain text) with the finetuned model while the mean difference between the models' activations \
         (cached positions first..last at that layer; defaults 1..4 and the middle layer) is added, times \
         strength: it amplifies what the finetune changed. Each prompt costs one model interaction."
    } else {
        ""
    };
    let query = if sql {
        "\n- query: {\"sql\": \"SELECT ...\", \"limit\": 50} runs one read-only SQL statement over the activation cache \
         (tables activations, acts, tokens, logit_diff, ...; `\\d` is not available, use `SELECT * FROM cache_info()`) and \
         returns at most `limit` rows (at most 500). Free: costs no model interaction."
    } else {
        ""
    };
    format!(
        "You are an interpretability agent. A language model (the base) was finetuned into another (the \
organism); your job is to find out what the finetune taught it: its domain and its characteristic behaviour.

You cannot see the finetuning data. You have: {overview_kind}; questions to both models, within a budget; and \
the tools below.

Tools
- ask_model: {{\"prompts\": [\"...\", ...]}} sends each prompt to both models as a user turn and returns both \
answers. Each prompt costs one model interaction.
- hypothesis_tracking: {{\"action\": \"add\", \"hypothesis\": \"...\"}}, {{\"action\": \"update\", \"id\": 1, \
\"status\": \"confirmed|rejected|open\", \"reasoning\": \"...\"}} or {{\"action\": \"get\"}} keeps your hypotheses. Free.{query}{steer}

Procedure: read the overview and write down hypotheses; test each by asking both models questions whose \
answers should differ if it is true; update the board; when one wins (or several: a finetune can teach more \
than one thing), verify it once more with the models, then answer.

Budgets: {} agent turns, {} model interactions{}. Every tool result says what remains.

Output grammar: think briefly, then end your reply with exactly one of
  CALL(tool_name: {{json arguments}})
  FINAL(description: \"<the domain and behaviour in a sentence>. <details and key evidence>\")
One tool per turn; the CALL must be the last thing in the reply and its arguments valid JSON. If the evidence \
does not decide, answer FINAL(description: \"Inconclusive. ...\") saying what it points to.",
        budgets.agent_calls,
        budgets.model_interactions,
        budgets
            .generated_tokens
            .map_or(String::new(), |t| format!(", {t} tokens of your own output"))
    )
}

struct Run<'t, 'a> {
    tools: &'t mut Tools<'a>,
    budgets: Budgets,
    agent_calls_left: usize,
    interactions_left: usize,
    completion_tokens: u64,
    hypotheses: Vec<Hypothesis>,
}

impl Run<'_, '_> {
    fn budgets_json(&self) -> Value {
        json!({
            "model_interactions_remaining": self.interactions_left,
            "agent_llm_calls_remaining": self.agent_calls_left,
            "token_budget_remaining": self.budgets.generated_tokens.map_or(-1, |t| t as i64 - self.completion_tokens as i64),
        })
    }

    fn tool_names(&self) -> Vec<&'static str> {
        let mut names = vec!["ask_model", "hypothesis_tracking"];
        if self.tools.query.is_some() {
            names.push("query");
        }
        if self.tools.steer.is_some() {
            names.push("steer");
        }
        names
    }

    /// The reply to a tool call: its result, or the error the agent is told.
    fn call(&mut self, tool: &str, args: &Map<String, Value>) -> String {
        if !self.tool_names().contains(&tool) {
            return format!(
                "UNKNOWN_TOOL: there is no tool {tool:?}; the tools are {}. Budgets: {}",
                self.tool_names().join(", "),
                self.budgets_json()
            );
        }
        let result = match tool {
            "ask_model" => self.ask_model(args),
            "hypothesis_tracking" => self.track(args),
            "steer" => self.steer(args),
            _ => self.query(args),
        };
        match result {
            Ok(data) => {
                let memo = match self.interactions_left {
                    0 => "You have no model interactions left: answer with FINAL(description: \"...\").".to_string(),
                    n => format!("You have {n} model interactions left; use them to verify your hypotheses."),
                };
                format!(
                    "TOOL_RESULT({tool}): {}\n\n{memo}",
                    json!({"data": data, "budgets": self.budgets_json()})
                )
            }
            Err(ToolError::Budget(needed)) => format!(
                "MODEL_INTERACTION_BUDGET_EXHAUSTED: this call needs {needed} model interactions. Ask fewer \
                 questions, or answer with FINAL(description: \"...\").\n\n{}",
                json!({"budgets": self.budgets_json()})
            ),
            Err(ToolError::Parameter(e)) => format!(
                "TOOL_PARAMETER_ERROR: {e}. Check that your arguments match the tool. Budgets: {}",
                self.budgets_json()
            ),
            Err(ToolError::Failed(e)) => {
                format!("TOOL_ERROR({tool}): {e}. Budgets: {}", self.budgets_json())
            }
        }
    }

    fn ask_model(&mut self, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let prompts = prompts_arg(
            args,
            "ask_model takes {\"prompts\": [\"...\", ...]}",
            "prompts must be a list of strings",
        )?;
        if prompts.len() > self.interactions_left {
            return Err(ToolError::Budget(prompts.len()));
        }
        let mut answers = Vec::new();
        for prompt in &prompts {
            let (base, organism) = (self.tools.ask_model)(prompt).map_err(|e| ToolError::Failed(one_line(&e)))?;
            self.interactions_left -= 1;
            answers.push(json!({"prompt": prompt, "base": base, "finetuned": organism}));
        }
        Ok(Value::Array(answers))
    }

    fn steer(&mut self, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let usage = "steer takes {\"prompts\": [\"...\"], \"strength\": 4.0, \"layer\": 3, \"first\": 1, \"last\": 4}";
        let prompts = prompts_arg(args, usage, usage)?;
        let number = |k: &str| args.get(k).and_then(Value::as_f64);
        let whole = |k: &str| -> Result<Option<usize>, ToolError> {
            match args.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| ToolError::Parameter(format!("{k} must be a whole number"))),
            }
        };
        let request = super::tools::SteerRequest {
            prompts,
            layer: whole("layer")?,
            strength: number("strength").unwrap_or(4.0),
            first: whole("first")?.unwrap_or(1),
            last: whole("last")?.unwrap_or(4),
        };
        if request.first > request.last {
            return Err(ToolError::Parameter("first must not be after last".into()));
        }
        if request.prompts.len() > self.interactions_left {
            return Err(ToolError::Budget(request.prompts.len()));
        }
        let steer = self.tools.steer.as_mut().expect("listed only when present");
        let out = steer(&request).map_err(|e| ToolError::Failed(one_line(&e)))?;
        self.interactions_left -= request.prompts.len();
        Ok(out)
    }

    fn track(&mut self, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
        match args.get("action").and_then(Value::as_str) {
            Some("add") => {
                let hypothesis =
                    text("hypothesis").ok_or_else(|| ToolError::Parameter("add needs \"hypothesis\"".into()))?;
                let id = self.hypotheses.len() + 1;
                self.hypotheses.push(Hypothesis {
                    id,
                    hypothesis,
                    status: "open".into(),
                    reasoning: String::new(),
                });
                Ok(json!({"added": id}))
            }
            Some("update") => {
                let id = args
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ToolError::Parameter("update needs a numeric \"id\"".into()))?;
                let known = self.hypotheses.len();
                let h = self
                    .hypotheses
                    .iter_mut()
                    .find(|h| h.id as u64 == id)
                    .ok_or_else(|| ToolError::Parameter(format!("there is no hypothesis {id} (ids 1..{known})")))?;
                if let Some(s) = text("status") {
                    h.status = s;
                }
                if let Some(r) = text("reasoning") {
                    h.reasoning = r;
                }
                Ok(json!({"updated": id}))
            }
            Some("get") => Ok(serde_json::to_value(&self.hypotheses).unwrap_or_default()),
            _ => Err(ToolError::Parameter("action must be add, update or get".into())),
        }
    }

    fn query(&mut self, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let sql = args
            .get("sql")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::Parameter("query takes {\"sql\": \"SELECT ...\", \"limit\": 50}".into()))?;
        let limit = match args.get("limit") {
            None => QUERY_ROWS,
            Some(v) => v
                .as_u64()
                .filter(|&n| n >= 1 && n as usize <= QUERY_MAX_ROWS)
                .ok_or_else(|| ToolError::Parameter(format!("limit must be between 1 and {QUERY_MAX_ROWS}")))?
                as usize,
        };
        let query = self.tools.query.as_mut().expect("listed only when present");
        query(sql, limit).map_err(|e| ToolError::Failed(one_line(&e)))
    }
}

/// The non-empty list of strings under `prompts`; `usage` when it is missing or empty, `not_strings` when an
/// item is not a string.
fn prompts_arg(args: &Map<String, Value>, usage: &str, not_strings: &str) -> Result<Vec<String>, ToolError> {
    match args.get("prompts") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ToolError::Parameter(not_strings.into())),
        _ => Err(ToolError::Parameter(usage.into())),
    }
}

enum ToolError {
    Budget(usize),
    Parameter(String),
    Failed(String),
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the agent: `overview` is its first message (a method's findings; empty for a blackbox agent).
pub fn run(
    client: &mut Client,
    system: &str,
    overview: &str,
    tools: &mut Tools<'_>,
    budgets: Budgets,
) -> Result<Outcome> {
    let mut transcript = vec![
        ChatMessage::new(
            "system",
            format!(
                "{system}\n\nRemaining model interactions: {}",
                budgets.model_interactions
            ),
        ),
        ChatMessage::new("user", overview),
    ];
    let mut run = Run {
        tools,
        budgets,
        agent_calls_left: budgets.agent_calls,
        interactions_left: budgets.model_interactions,
        completion_tokens: 0,
        hypotheses: Vec::new(),
    };
    let usage_before = client.usage;
    let (description, ended) = loop {
        if run.agent_calls_left == 0 {
            break (None, "agent_calls_exhausted");
        }
        let reply = client.chat(&transcript)?;
        run.agent_calls_left -= 1;
        run.completion_tokens += reply.usage.completion_tokens;
        transcript.push(ChatMessage::new("assistant", reply.content.clone()));
        if budgets.generated_tokens.is_some_and(|t| run.completion_tokens > t) {
            break (None, "token_budget_exhausted");
        }
        let answer = match parse_turn(&reply.content) {
            Turn::Final(description) => break (Some(description), "final"),
            Turn::FormatError(error) => {
                let last = reply
                    .content
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                format!(
                    "FORMAT_ERROR: your last turn did not follow the output grammar. End with exactly one of \
                     FINAL(description: \"...\") or CALL(tool_name: {{json_args}}); a CALL may span lines but must be \
                     the last content, one tool per turn, its arguments valid JSON.\nLast line received: {last}\n\
                     Error: {error}\nBudgets: {}",
                    run.budgets_json()
                )
            }
            Turn::Call { tool, args } => run.call(&tool, &args),
        };
        transcript.push(ChatMessage::new("user", answer));
    };
    let mut usage = client.usage;
    usage.prompt_tokens -= usage_before.prompt_tokens;
    usage.completion_tokens -= usage_before.completion_tokens;
    usage.total_tokens -= usage_before.total_tokens;
    Ok(Outcome {
        description,
        ended: ended.to_string(),
        agent_calls_used: budgets.agent_calls - run.agent_calls_left,
        model_interactions_used: budgets.model_interactions - run.interactions_left,
        usage,
        hypotheses: run.hypotheses,
        transcript,
    })
}
