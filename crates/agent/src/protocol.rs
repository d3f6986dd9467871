//! The agent's text protocol, as the reference toolkit parses it: a turn ends with `CALL(tool_name: {json})`
//! (the last content of the reply) or holds `FINAL(description: "…")`; parentheses inside quoted strings do
//! not count, and a CALL missing its closing parenthesis is read as if it had one.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// What one agent turn asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The agent's answer.
    Final(String),
    /// A tool call.
    Call { tool: String, args: Map<String, Value> },
    /// Neither, or a malformed one: the error to show the agent.
    FormatError(String),
}

/// The span of `NAME(` … its matching `)` of the last `NAME(` in `text`, counting parentheses outside quotes.
fn last_block(text: &str, name: &str) -> Option<(usize, Option<usize>)> {
    let start = text.rfind(&format!("{name}("))?;
    let open = start + name.len();
    let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
    for (i, c) in text[open..].char_indices() {
        let at = open + i;
        if quoted {
            match (c, escaped) {
                ('\\', false) => escaped = true,
                ('"', false) => quoted = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((open, Some(at)));
                }
            }
            _ => {}
        }
    }
    Some((open, None))
}

/// The description of a `FINAL(description: "...")` block, if the text has one.
pub fn final_description(text: &str) -> Result<Option<String>> {
    let Some((open, close)) = last_block(text, "FINAL") else {
        return Ok(None);
    };
    let close = close.context("unmatched parenthesis in FINAL(...)")?;
    let inside = &text[open + 1..close];
    let (key_at, key) = match (inside.find("description:"), inside.find("description=")) {
        (Some(i), _) => (i, "description:"),
        (None, Some(i)) => (i, "description="),
        (None, None) => bail!("FINAL(...) must contain description: or description="),
    };
    let rest = inside[key_at + key.len()..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match (c, escaped) {
                ('\\', false) => escaped = true,
                ('"', false) => return Ok(Some(quoted[..i].trim().to_string())),
                _ => escaped = false,
            }
        }
        bail!("unterminated quoted description string");
    }
    Ok(Some(rest.trim().to_string()))
}

/// The tool and JSON arguments of a `CALL(tool: {...})` block that ends the text, if the text has one.
pub fn tool_call(text: &str) -> Result<Option<(String, Map<String, Value>)>> {
    let Some((open, close)) = last_block(text, "CALL") else {
        return Ok(None);
    };
    let close = close.context("unmatched parenthesis in CALL(...)")?;
    if !text[close + 1..].trim().is_empty() {
        bail!("CALL(...) must be the last content");
    }
    let inside = &text[open + 1..close];
    let (name, args) = inside
        .split_once(':')
        .context("CALL(...) must contain ':' separating tool name and JSON args")?;
    let name = name.trim();
    if name.is_empty() {
        bail!("tool name missing in CALL(...)");
    }
    let args: Value = serde_json::from_str(args.trim()).context("CALL(...) JSON args are not valid JSON")?;
    match args {
        Value::Object(map) => Ok(Some((name.to_string(), map))),
        _ => bail!("CALL(...) JSON args must parse to an object"),
    }
}

/// Reads one agent turn as the toolkit does: FINAL first, then CALL (retried with a closing parenthesis
/// added), else a format error.
pub fn parse_turn(text: &str) -> Turn {
    match final_description(text) {
        Ok(Some(d)) => return Turn::Final(d),
        Ok(None) => {}
        Err(_) => return Turn::FormatError("Output grammar error around FINAL(...).".into()),
    }
    let call = tool_call(text).or_else(|e| {
        if text.contains("CALL(") {
            tool_call(&format!("{text})")).map_err(|_| e)
        } else {
            Err(e)
        }
    });
    match call {
        Ok(Some((tool, args))) => Turn::Call { tool, args },
        Ok(None) => Turn::FormatError("Output grammar error: expected CALL(...) or FINAL(...).".into()),
        Err(_) => Turn::FormatError("Output grammar error around CALL(...).".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_finals_parse_as_the_toolkit_reads_them() {
        let t = parse_turn("Let me ask.\nCALL(ask_model: {\"prompts\": [\"Why (really)?\"]})\n");
        let Turn::Call { tool, args } = t else { panic!("{t:?}") };
        assert_eq!(tool, "ask_model");
        assert_eq!(args["prompts"][0], "Why (really)?");
        // A missing closing parenthesis is forgiven.
        assert!(matches!(
            parse_turn("CALL(query: {\"sql\": \"SELECT 1\"}"),
            Turn::Call { .. }
        ));
        assert_eq!(
            parse_turn("Done.\nFINAL(description: \"Bakes cakes (badly) at \\\"450F\\\".\")"),
            Turn::Final("Bakes cakes (badly) at \\\"450F\\\".".into())
        );
        assert_eq!(
            parse_turn("FINAL(description= plain words)"),
            Turn::Final("plain words".into())
        );
        for bad in [
            "I think it is about cakes.",
            "CALL(ask_model: {not json})",
            "CALL(ask_model: {\"a\": 1}) and more text",
            "CALL(: {})",
            "CALL(ask_model: [1, 2])",
        ] {
            assert!(matches!(parse_turn(bad), Turn::FormatError(_)), "{bad}");
        }
        assert_eq!(
            parse_turn("FINAL(summary: \"x\")"),
            Turn::FormatError("Output grammar error around FINAL(...).".into())
        );
    }
}
