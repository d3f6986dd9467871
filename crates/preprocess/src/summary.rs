//! What a preprocessing run reports: its totals ([`Summary`]) and where its time went, stage by stage, on the
//! compute and the writer thread ([`Stages`]).

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Tokens in the datasets.
    pub tokens: usize,
    pub partitions_written: usize,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// Whether the base model's cached partitions were reused instead of running it.
    pub base_reused: bool,
    /// Where the time went, stage by stage.
    pub stages: Stages,
    /// Which BOS and chat template the tokens were made with ([`SpecialTokens::describe`]).
    ///
    /// [`SpecialTokens::describe`]: diffsql_model::special_tokens::SpecialTokens::describe
    pub tokenizer: String,
    /// For an organism with tokens of its own: the shared vocabulary the comparisons used, and the
    /// organism's tokens found in the data.
    pub vocabulary: Option<String>,
}

impl Summary {
    pub fn is_noop(&self) -> bool {
        self.partitions_written == 0
    }
}

/// Seconds spent in each stage of a run. The compute thread reads data, loads and runs the models; the writer
/// thread computes logits and next-token statistics and encodes and writes partitions, overlapping the next
/// batch's forward passes (`waiting` is the compute thread blocked on a full writer queue).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub tokenize: f64,
    pub load: f64,
    pub forward_base: f64,
    pub forward_organism: f64,
    pub waiting: f64,
    pub logits: f64,
    pub statistics: f64,
    pub write: f64,
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tokenise {:.1} s, load {:.1} s, forward base {:.1} s, forward organism {:.1} s, waiting for the writer {:.1} s; \
             writer thread: logits {:.1} s, next-token statistics {:.1} s, encode and write {:.1} s",
            self.tokenize,
            self.load,
            self.forward_base,
            self.forward_organism,
            self.waiting,
            self.logits,
            self.statistics,
            self.write
        )
    }
}
