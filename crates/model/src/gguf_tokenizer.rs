//! A tokenizer built from a GGUF file's own metadata (its vocabulary, merges, token types and special ids), for a
//! GGUF with no `tokenizer.json` beside it, equal to the one transformers builds from the same file
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, transformers 5's `integrations/gguf`):
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2) with the file's merges, the
//!   vocabulary respelled into the byte alphabet where it is not, and the split regex of the file's
//!   `tokenizer.ggml.pre` (`llama-bpe`, `qwen2`, …; GPT-2's own otherwise);
//! - `tokenizer.ggml.model = "llama"`: sentencepiece-style BPE with byte fallback; merges from the file or,
//!   when it has none, rebuilt from the vocabulary (best scores first; for Gemma, whose scores do not follow its
//!   merge order, the order of the tokens). Gemma's files also spell all-space tokens with real spaces: they are
//!   respelled with `▁` first.
//!
//! Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added tokens, so
//! that both stay whole; BOS (and EOS) are added as `tokenizer.ggml.add_bos_token` says (a sentencepiece
//! vocabulary adds BOS unless told not to).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The split regex of Llama 3's (and many others') byte-level vocabularies.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex a `tokenizer.ggml.pre` names, where transformers knows one.
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// What the metadata says about the tokenizer.
struct Meta {
    kind: String,
    pre: String,
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Option<Vec<f64>>,
    merges: Option<Vec<(String, String)>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    v.to_vec()
        .with_context(|| format!("{key} is not an array"))?
        .iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .with_context(|| format!("{key} holds a non-string"))
        })
        .collect()
}

impl Meta {
    fn read(c: &Content) -> Result<Self> {
        let get = |k: &str| c.metadata.get(k);
        let text = |k: &str| get(k).and_then(|v| v.to_string().ok()).cloned();
        let id = |k: &str| {
            get(k).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_i32().ok().and_then(|x| u32::try_from(x).ok()))
                    .or_else(|| v.to_u64().ok().and_then(|x| u32::try_from(x).ok()))
            })
        };
        let flag = |k: &str| get(k).and_then(|v| v.to_bool().ok());
        let tokens = strings(
            get("tokenizer.ggml.tokens").context("the GGUF has no tokenizer.ggml.tokens (no vocabulary in its metadata): put the model's tokenizer.json beside it")?,
            "tokenizer.ggml.tokens",
        )?;
        let types = match get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32().or_else(|_| t.to_u32().map(|x| x as i32)))
                .collect::<candle_core::Result<Vec<i32>>>()?,
            None => vec![1; tokens.len()],
        };
        let scores = get("tokenizer.ggml.scores")
            .map(|v| -> Result<Vec<f64>> {
                v.to_vec()?
                    .iter()
                    .map(|s| Ok(f64::from(s.to_f32()?)))
                    .collect::<Result<Vec<f64>>>()
            })
            .transpose()?;
        let merges = get("tokenizer.ggml.merges")
            .map(|v| -> Result<Vec<(String, String)>> {
                strings(v, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .with_context(|| format!("merge {m:?} is not two tokens"))
                    })
                    .collect()
            })
            .transpose()?;
        if types.len() != tokens.len() {
            bail!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            );
        }
        Ok(Self {
            kind: text("tokenizer.ggml.model").context("the GGUF has no tokenizer.ggml.model")?,
            pre: text("tokenizer.ggml.pre").unwrap_or_default(),
            tokens,
            types,
            scores,
            merges,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
        })
    }
}

/// GPT-2's map from bytes to printable characters (the byte-level alphabet).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("a Latin-1 code point")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("a code point")
        };
    }
    out
}

/// A vocabulary as Python's `{token: index for index, token in enumerate(tokens)}` makes it: the last index of
/// a repeated token wins, its place in the order is its first.
struct OrderedVocab {
    order: Vec<String>,
    index: HashMap<String, u32>,
}

impl OrderedVocab {
    fn new<'a>(tokens: impl IntoIterator<Item = &'a String>) -> Self {
        let mut order = Vec::new();
        let mut index = HashMap::new();
        for (i, t) in tokens.into_iter().enumerate() {
            if index.insert(t.clone(), i as u32).is_none() {
                order.push(t.clone());
            }
        }
        Self { order, index }
    }
}

/// Merges implied by a vocabulary (transformers' `generate_merges`): every split of every token into two
/// tokens of the vocabulary, each token's splits by the pieces' ids, then all by `scores` (best first) or, with
/// none, by the merged token's id, and by the pieces' lengths; ties keep their order.
pub fn merges_from_vocab(tokens: &[String], scores: Option<&[f64]>) -> Vec<(String, String)> {
    let vocab = OrderedVocab::new(tokens);
    let score_of: HashMap<&str, f64> = match scores {
        Some(s) => tokens.iter().zip(s).map(|(t, &v)| (t.as_str(), v)).collect(),
        None => vocab.index.iter().map(|(t, &i)| (t.as_str(), f64::from(i))).collect(),
    };
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for token in &vocab.order {
        let score = score_of[token.as_str()];
        let mut local: Vec<(String, String, f64)> = Vec::new();
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if vocab.index.contains_key(l) && vocab.index.contains_key(r) {
                local.push((l.to_string(), r.to_string(), score));
            }
        }
        local.sort_by_key(|(l, r, _)| (vocab.index[l], vocab.index[r]));
        merges.extend(local);
    }
    let key = |m: &(String, String, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    let reverse = scores.is_some();
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        let order = ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1)).then(ka.2.cmp(&kb.2));
        if reverse {
            order.reverse()
        } else {
            order
        }
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn added(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

fn template(meta: &Meta, tokens: &[String], add_bos_default: bool) -> Json {
    let mut single = Vec::new();
    let mut specials = Map::new();
    let mut special = |id: Option<u32>| -> Option<Json> {
        let id = id?;
        let token = tokens.get(id as usize)?;
        specials.insert(token.clone(), json!({"id": token, "ids": [id], "tokens": [token]}));
        Some(json!({"SpecialToken": {"id": token, "type_id": 0}}))
    };
    let bos = meta
        .add_bos
        .unwrap_or(add_bos_default)
        .then(|| special(meta.bos))
        .flatten();
    single.extend(bos);
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    let eos = meta.add_eos.unwrap_or(false).then(|| special(meta.eos)).flatten();
    single.extend(eos);
    json!({"type": "TemplateProcessing", "single": single.clone(), "pair": single, "special_tokens": specials})
}

/// Builds the tokenizer the GGUF's metadata describes; `arch` is its `general.architecture`.
pub fn from_gguf(content: &Content, arch: &str) -> Result<tokenizers::Tokenizer> {
    let meta = Meta::read(content)?;
    let json = match meta.kind.as_str() {
        "gpt2" => byte_level(&meta),
        "llama" if arch.starts_with("gemma") => sentencepiece(&meta, true),
        "llama" => sentencepiece(&meta, false),
        other => bail!(
            "cannot build a tokenizer from tokenizer.ggml.model = {other:?} (diffsql builds gpt2 and llama); put the model's tokenizer.json beside the GGUF"
        ),
    }?;
    json.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow::anyhow!("the tokenizer built from the GGUF's metadata is invalid: {e}"))
}

/// Byte-level BPE.
fn byte_level(meta: &Meta) -> Result<Json> {
    let alphabet = bytes_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let spelled: Vec<String> = meta
        .tokens
        .iter()
        .map(|t| {
            if in_alphabet(t) {
                t.clone()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            }
        })
        .collect();
    let merges = match &meta.merges {
        Some(m) => m.clone(),
        None => merges_from_vocab(&meta.tokens, meta.scores.as_deref()),
    };
    let vocab: Map<String, Json> = spelled.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let mut added_tokens = Vec::new();
    for (i, (t, &kind)) in meta.tokens.iter().zip(&meta.types).enumerate() {
        // A control token outside the byte alphabet is one llama.cpp mislabelled: transformers skips it.
        if kind == CONTROL && in_alphabet(t) {
            added_tokens.push(added(i, t, true));
        } else if kind == USER_DEFINED && vocab.contains_key(t) {
            added_tokens.push(added(i, t, false));
        }
    }
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match split_regex(&meta.pre) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false)
        ]}),
        None => byte_level(true),
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template(meta, &meta.tokens, false),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}

/// Sentencepiece-style BPE with byte fallback (Llama 2, Mistral's older vocabularies; Gemma with `gemma`).
fn sentencepiece(meta: &Meta, gemma: bool) -> Result<Json> {
    let tokens: Vec<String> = if gemma {
        // All-space tokens are stored with real spaces; Gemma's tokenizer looks them up as "▁▁…".
        meta.tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect()
    } else {
        meta.tokens.clone()
    };
    let merges = match (&meta.merges, gemma) {
        (Some(m), _) => m.clone(),
        // Gemma's scores do not follow its merge order; the order of its tokens does (first is best).
        (None, true) => {
            let positions: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
            merges_from_vocab(&tokens, Some(&positions))
        }
        (None, false) => merges_from_vocab(&tokens, meta.scores.as_deref()),
    };
    let vocab: Map<String, Json> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let mut added_tokens = Vec::new();
    for (i, (t, &kind)) in tokens.iter().zip(&meta.types).enumerate() {
        if kind == CONTROL {
            added_tokens.push(added(i, t, true));
        } else if kind == USER_DEFINED {
            added_tokens.push(added(i, t, false));
        }
    }
    let replace_space = json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "});
    let (normalizer, pre_tokenizer, decoder, unk) = if gemma {
        let unk = if vocab.contains_key("<unk>") {
            Some("<unk>".to_string())
        } else {
            meta.unk.and_then(|u| tokens.get(u as usize).cloned())
        };
        (
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            json!({"type": "Sequence", "decoders": [replace_space, {"type": "ByteFallback"}, {"type": "Fuse"}]}),
            unk,
        )
    } else {
        (
            Json::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [replace_space, {"type": "ByteFallback"}, {"type": "Fuse"},
                   {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            None,
        )
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template(meta, &tokens, true),
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `generate_merges` on the same vocabularies (computed in Python, transformers 5.25):
    /// `generate_merges({t: i for i, t in enumerate(v)}, scores)`.
    #[test]
    fn merges_from_a_vocabulary_equal_transformers_generate_merges() {
        let v: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "▁", "▁a", "▁ab"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let pairs =
            |m: Vec<(String, String)>| -> Vec<String> { m.into_iter().map(|(l, r)| format!("{l} {r}")).collect() };
        // Scores: positions, best first (Gemma's rule).
        let positions: Vec<f64> = (0..v.len()).map(|i| -(i as f64)).collect();
        assert_eq!(
            pairs(merges_from_vocab(&v, Some(&positions))),
            ["a b", "b c", "ab c", "a bc", "▁ a", "▁a b", "▁ ab"]
        );
        // No scores: by the merged token's id, ascending.
        assert_eq!(
            pairs(merges_from_vocab(&v, None)),
            ["a b", "b c", "a bc", "ab c", "▁ a", "▁ ab", "▁a b"]
        );
        // Scores that reorder: "▁ab" best, then "bc".
        let scores = [0.0, 0.0, 0.0, -5.0, -1.0, -4.0, 0.0, -3.0, 2.0];
        assert_eq!(
            pairs(merges_from_vocab(&v, Some(&scores))),
            ["▁a b", "▁ ab", "b c", "▁ a", "ab c", "a bc", "a b"]
        );
    }

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = bytes_to_unicode();
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
