//! `[evaluation]`: the agentic evaluation's settings (the reference toolkit's `diffing/evaluation.yaml`): where
//! the agent's and the grader's LLMs are, the agent's budgets (model interactions swept as a list), how the pair
//! answers the agent, and how often each run and grade repeats.

use serde::{Deserialize, Serialize};

/// Everything `pipeline.mode=evaluation` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Run agents after diffing in `pipeline.mode=full`.
    pub enabled: bool,
    /// An OpenAI-compatible API (OpenRouter's by default; vLLM, llama.cpp's server, `diffsql serve`).
    pub base_url: String,
    /// The environment variable holding the API key (none is sent when it is empty or unset and the URL is
    /// a loopback address).
    pub api_key_env: String,
    /// Longest one LLM request may take, in seconds.
    pub timeout_s: u64,
    /// Retries of a request on transient failures (connection errors, 408, 429, 5xx).
    pub retries: u32,
    pub agent: AgentConfig,
    pub budgets: BudgetsConfig,
    pub ask_model: AskModelConfig,
    pub grader: GraderConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub model: String,
    pub temperature: f64,
    /// Most tokens of one agent reply.
    pub max_tokens: usize,
    /// Independent runs per budget.
    pub repeats: usize,
    /// The agent gets the method's results as its first message; `false` runs a blackbox agent (no overview).
    pub overview: bool,
    /// Rows of each result table shown in the overview.
    pub overview_rows: usize,
    /// The agent may run read-only SQL over the cache and the organism's results (`query`), a tool the
    /// toolkit's agents lack.
    pub sql: bool,
    /// The agent may generate with the organism steered by the mean activation difference (`steer`).
    pub steer: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    pub agent_calls: usize,
    /// One agent run (or `agent.repeats` runs) per entry.
    pub model_interactions: Vec<usize>,
    /// Completion tokens of the agent over a run; -1 for no limit.
    pub generated_tokens: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AskModelConfig {
    pub max_new_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// When set, the pair answers through this OpenAI-compatible endpoint (`diffsql serve`'s
    /// `http://127.0.0.1:8421/v1`: models `base` and the organism) instead of in this process.
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraderConfig {
    pub model: String,
    /// Calls per grade; the score is their mean.
    pub repeats: usize,
    /// Grade by word overlap with the description, with no LLM (weaker; needs no network).
    pub offline: bool,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://openrouter.ai/api/v1".into(),
            api_key_env: "OPENROUTER_API_KEY".into(),
            timeout_s: 300,
            retries: 3,
            agent: AgentConfig::default(),
            budgets: BudgetsConfig::default(),
            ask_model: AskModelConfig::default(),
            grader: GraderConfig::default(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            model: "openai/gpt-5".into(),
            temperature: 0.7,
            max_tokens: 10000,
            repeats: 1,
            overview: true,
            overview_rows: 20,
            sql: true,
            steer: true,
        }
    }
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            agent_calls: 100,
            model_interactions: vec![50],
            generated_tokens: 100_000,
        }
    }
}

impl Default for AskModelConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 1024,
            temperature: 0.8,
            base_url: None,
        }
    }
}

impl Default for GraderConfig {
    fn default() -> Self {
        Self {
            model: "openai/gpt-5-mini".into(),
            repeats: 3,
            offline: false,
        }
    }
}
