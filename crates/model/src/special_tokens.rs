//! Which special tokens a model's text starts and ends with, and its chat template, decided the way
//! transformers decides them, so that cached tokens are the tokens the model was trained on.
//!
//! Sources, first one that speaks wins, per setting: `tokenizer_config.json` (`bos_token`, `add_bos_token`,
//! ...; a `null` token means "none"), then the metadata a GGUF file carries (`tokenizer.ggml.bos_token_id`,
//! `tokenizer.ggml.add_bos_token`, `tokenizer.chat_template`, ...), then `config.json` (`bos_token_id`).
//! Whether BOS is added, when nothing says so, is what `tokenizer.json`'s post-processor does with special
//! tokens on (as a transformers fast tokenizer does).

use std::path::Path;

use serde_json::Value;

/// Tokenizer settings a GGUF file carries in its metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufTokenizerMeta {
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub chat_template: Option<String>,
}

/// A special token as text and id.
pub type SpecialToken = Option<(String, u32)>;

/// The special tokens and chat template of a model, with where each decision came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: SpecialToken,
    pub eos: SpecialToken,
    pub pad: SpecialToken,
    /// Whether every sequence starts with `bos` (added when missing).
    pub add_bos: bool,
    /// Where `add_bos` was decided (e.g. `GGUF metadata tokenizer.ggml.add_bos_token`).
    pub add_bos_origin: String,
    pub chat_template: Option<String>,
    /// Where the chat template came from.
    pub chat_template_origin: Option<String>,
}

impl SpecialTokens {
    /// One line for run summaries: `BOS <bos> (id 2) added (GGUF metadata ...); chat template from ...`.
    pub fn describe(&self) -> String {
        let bos = match (&self.bos, self.add_bos) {
            (Some((t, id)), true) => format!("BOS {t:?} (id {id}) added ({})", self.add_bos_origin),
            (Some((t, id)), false) => format!("BOS {t:?} (id {id}) not added ({})", self.add_bos_origin),
            (None, _) => format!("no BOS ({})", self.add_bos_origin),
        };
        let template = match &self.chat_template_origin {
            Some(o) => format!("chat template from {o}"),
            None => "no chat template".into(),
        };
        format!("{bos}; {template}")
    }

    /// The BOS id to prepend to every sequence, if any.
    pub fn bos_to_add(&self) -> Option<u32> {
        self.bos.as_ref().filter(|_| self.add_bos).map(|b| b.1)
    }

    /// Reads the settings of the model in `dir` (whose tokenizer is `tokenizer`), with `gguf` metadata if
    /// the weights are a GGUF file.
    pub fn resolve(dir: &Path, tokenizer: &tokenizers::Tokenizer, gguf: Option<&GgufTokenizerMeta>) -> Self {
        let read =
            |f: &str| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok() };
        let tokenizer_config = read("tokenizer_config.json");
        let config = read("config.json");
        let by_id = |id: u32| tokenizer.id_to_token(id).map(|t| (t, id));
        let token = |which: &str, gguf_id: Option<u32>| -> SpecialToken {
            if let Some(v) = tokenizer_config.as_ref().and_then(|c| c.get(format!("{which}_token"))) {
                // Present: a string, {"content": ...}, or null for "this model has none".
                let text = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
                return tokenizer.token_to_id(text).map(|id| (text.to_string(), id));
            }
            if let Some(id) = gguf_id {
                return by_id(id);
            }
            let id = config.as_ref()?.get(format!("{which}_token_id"))?.as_u64()?;
            by_id(u32::try_from(id).ok()?)
        };
        let bos = token("bos", gguf.and_then(|g| g.bos_id));
        let eos = token("eos", gguf.and_then(|g| g.eos_id));
        let pad = token("pad", gguf.and_then(|g| g.pad_id));
        let explicit = tokenizer_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool);
        let (mut add_bos, add_bos_origin) = match (explicit, gguf.and_then(|g| g.add_bos)) {
            (Some(a), _) => (a, "tokenizer_config.json add_bos_token".to_string()),
            (None, Some(a)) => (a, "GGUF metadata tokenizer.ggml.add_bos_token".to_string()),
            (None, None) => (
                post_processor_adds(tokenizer, bos.as_ref().map(|b| b.1)),
                "tokenizer.json post-processor".to_string(),
            ),
        };
        if bos.is_none() {
            add_bos = false;
        }
        // transformers 5 saves the template as chat_template.jinja; 4.x inside tokenizer_config.json.
        let (chat_template, chat_template_origin) =
            if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
                (Some(t), Some("chat_template.jinja".to_string()))
            } else if let Some(t) = tokenizer_config
                .as_ref()
                .and_then(|c| c.get("chat_template"))
                .and_then(Value::as_str)
            {
                (Some(t.to_string()), Some("tokenizer_config.json".to_string()))
            } else if let Some(t) = gguf.and_then(|g| g.chat_template.clone()) {
                (Some(t), Some("GGUF metadata tokenizer.chat_template".to_string()))
            } else {
                (None, None)
            };
        Self {
            bos,
            eos,
            pad,
            add_bos,
            add_bos_origin,
            chat_template,
            chat_template_origin,
        }
    }
}

/// Whether `tokenizer.json`'s post-processor puts `bos` first when special tokens are on.
fn post_processor_adds(tokenizer: &tokenizers::Tokenizer, bos: Option<u32>) -> bool {
    let Some(bos) = bos else { return false };
    let with = tokenizer
        .encode("a", true)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default();
    let without = tokenizer
        .encode("a", false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default();
    with.first() == Some(&bos) && without.first() != Some(&bos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer over a few words, `<bos>` = 0 and `<eos>` = 1, with or without a
    /// post-processor that adds `<bos>`.
    fn tokenizer(post_processor: bool) -> tokenizers::Tokenizer {
        let post = if post_processor {
            r#"{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<bos>": {"id": "<bos>", "ids": [0], "tokens": ["<bos>"]}}}"#
        } else {
            "null"
        };
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [{{"id": 0, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
                                 {{"id": 1, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}],
                "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": {post}, "decoder": null,
                "model": {{"type": "WordLevel", "vocab": {{"<bos>": 0, "<eos>": 1, "a": 2, "b": 3}}, "unk_token": "a"}}}}"#
        );
        tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap()
    }

    fn resolve(files: &[(&str, &str)], post: bool, gguf: Option<&GgufTokenizerMeta>) -> SpecialTokens {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        SpecialTokens::resolve(dir.path(), &tokenizer(post), gguf)
    }

    #[test]
    fn gguf_metadata_decides_bos_when_no_tokenizer_config_does() {
        let gguf = GgufTokenizerMeta {
            bos_id: Some(0),
            eos_id: Some(1),
            add_bos: Some(true),
            chat_template: Some("{{ bos_token }}".into()),
            ..Default::default()
        };
        let s = resolve(&[], false, Some(&gguf));
        assert_eq!(s.bos, Some(("<bos>".into(), 0)));
        assert_eq!(s.eos, Some(("<eos>".into(), 1)));
        assert_eq!(s.bos_to_add(), Some(0));
        assert_eq!(
            s.chat_template_origin.as_deref(),
            Some("GGUF metadata tokenizer.chat_template")
        );
        assert!(
            s.describe()
                .contains("added (GGUF metadata tokenizer.ggml.add_bos_token)"),
            "{}",
            s.describe()
        );
        let off = GgufTokenizerMeta {
            add_bos: Some(false),
            ..gguf.clone()
        };
        assert_eq!(resolve(&[], true, Some(&off)).bos_to_add(), None);
        // No add_bos key: the post-processor decides.
        let silent = GgufTokenizerMeta { add_bos: None, ..gguf };
        assert_eq!(resolve(&[], true, Some(&silent)).bos_to_add(), Some(0));
        assert_eq!(resolve(&[], false, Some(&silent)).bos_to_add(), None);
    }

    #[test]
    fn tokenizer_config_wins_and_null_means_none() {
        let gguf = GgufTokenizerMeta {
            bos_id: Some(0),
            add_bos: Some(true),
            ..Default::default()
        };
        let s = resolve(
            &[("tokenizer_config.json", r#"{"add_bos_token": false}"#)],
            true,
            Some(&gguf),
        );
        assert_eq!(s.bos_to_add(), None);
        let none = resolve(
            &[
                ("tokenizer_config.json", r#"{"bos_token": null}"#),
                ("config.json", r#"{"bos_token_id": 0}"#),
            ],
            true,
            None,
        );
        assert_eq!(none.bos, None, "a null bos_token must not fall back to config.json");
        assert_eq!(none.bos_to_add(), None);
    }

    #[test]
    fn without_add_bos_token_the_post_processor_decides() {
        let config = [("tokenizer_config.json", r#"{"bos_token": "<bos>"}"#)];
        assert_eq!(resolve(&config, true, None).bos_to_add(), Some(0));
        // A known BOS that the tokenizer never adds (SmolLM2's case) is not prepended.
        assert_eq!(resolve(&config, false, None).bos_to_add(), None);
        assert_eq!(
            resolve(&[("config.json", r#"{"bos_token_id": 0}"#)], true, None).bos_to_add(),
            Some(0)
        );
    }
}
