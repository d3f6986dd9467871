//! Turning a dataset's samples into the token sequences preprocessing runs: chat rendered through the
//! template, BOS added only when missing, truncated to `context_len`, limited by `max_samples`/`max_tokens`.

use anyhow::{anyhow, Result};

use super::chat::{alternates, require, ChatTemplate};
use super::source::Sample;

/// One sequence as the models see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Index within its dataset.
    pub seq_id: i64,
    /// The text the tokens came from (after the chat template).
    pub text: String,
    pub ids: Vec<u32>,
}

/// The token sequences of one dataset.
#[derive(Debug, Clone)]
pub struct TokenizedDataset {
    pub name: String,
    pub split: String,
    pub sequences: Vec<Sequence>,
    /// Conversations skipped because their turns do not alternate.
    pub skipped: usize,
}

impl TokenizedDataset {
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.ids.len()).sum()
    }
}

/// Limits of one dataset's tokenisation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub context_len: usize,
    pub max_samples: usize,
    pub max_tokens: usize,
}

/// Tokenises `samples` of dataset `name`.
pub fn tokenize(
    name: &str,
    split: &str,
    samples: &[Sample],
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    template: Option<&ChatTemplate>,
    limits: Limits,
) -> Result<TokenizedDataset> {
    let mut out = TokenizedDataset {
        name: name.into(),
        split: split.into(),
        sequences: Vec::new(),
        skipped: 0,
    };
    let (max_samples, max_tokens) = (limits.max_samples, limits.max_tokens);
    let mut total = 0usize;
    for sample in samples {
        if out.sequences.len() >= max_samples || total >= max_tokens {
            break;
        }
        let text = match sample {
            Sample::Text(t) => t.clone(),
            Sample::Chat(m) if !alternates(m) => {
                out.skipped += 1;
                continue;
            }
            Sample::Chat(m) => require(template, name)?.render(m)?,
        };
        let encoding = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow!("dataset {name}: cannot tokenise a sample: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(b) = bos {
            if ids.first() != Some(&b) {
                ids.insert(0, b);
            }
        }
        ids.truncate(limits.context_len.min(max_tokens - total));
        if ids.is_empty() {
            continue;
        }
        total += ids.len();
        out.sequences.push(Sequence {
            seq_id: out.sequences.len() as i64,
            text,
            ids,
        });
    }
    Ok(out)
}
