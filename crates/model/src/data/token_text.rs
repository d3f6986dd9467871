//! Tokens as people read them: a token that is only part of a UTF-8 character (byte-fallback and byte-level
//! BPE fragments) is shown by its bytes (`<0xE2>`), and control characters are escaped, the same way in the
//! cache's `token` columns, the text report, the charts and the dashboard.

/// The text of token `id`: its decoded text, or, when that is not whole characters (it decodes to U+FFFD),
/// its bytes, with the valid UTF-8 parts kept as text and the rest as `<0xXX>`.
pub fn token_text(tokenizer: &tokenizers::Tokenizer, id: u32) -> String {
    let text = tokenizer.decode(&[id], false).unwrap_or_default();
    if !text.contains('\u{FFFD}') {
        return text;
    }
    let Some(piece) = tokenizer.id_to_token(id) else {
        return text;
    };
    if is_byte_token(&piece) {
        return piece;
    }
    match byte_level_bytes(&piece) {
        Some(bytes) => bytes_text(&bytes),
        None => text,
    }
}

/// `<0xAB>`, SentencePiece's byte-fallback token spelling.
fn is_byte_token(piece: &str) -> bool {
    piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') && u8::from_str_radix(&piece[3..5], 16).is_ok()
}

/// The bytes behind a byte-level BPE piece (GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100 onwards, in order), or None if the piece is not one.
fn byte_level_bytes(piece: &str) -> Option<Vec<u8>> {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let shifted: Vec<u8> = (0..=255u8).filter(|&b| !printable(b)).collect();
    piece
        .chars()
        .map(|c| {
            let code = c as u32;
            match u8::try_from(code) {
                Ok(b) if printable(b) => Some(b),
                _ => code.checked_sub(256).and_then(|i| shifted.get(i as usize).copied()),
            }
        })
        .collect()
}

/// Bytes as text: valid UTF-8 runs as themselves, every other byte as `<0xXX>`.
fn bytes_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("<0x{b:02X}>"));
        }
    }
    out
}

/// `text` with control characters escaped (`\n`, `\t`, `\r`, others as `<0x1F>`), for labels and reports.
pub fn readable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("<0x{:02X}>", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// [`readable`] in double quotes, so leading and trailing spaces show (`" Roman"`).
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", readable(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(readable("a\u{1f}b"), "a<0x1F>b");
        assert_eq!(readable("\n\tx\r"), "\\n\\tx\\r");
        assert_eq!(readable(" Roman"), " Roman");
        assert_eq!(readable("\u{7f}"), "<0x7F>");
        assert_eq!(quoted(" THEM\n"), "\" THEM\\n\"");
    }

    #[test]
    fn byte_fragments_show_their_bytes() {
        // "’" is E2 80 99; a token holding only E2 80 is not text.
        assert_eq!(bytes_text(&[0xE2, 0x80]), "<0xE2><0x80>");
        assert_eq!(bytes_text(b"ab\xE2"), "ab<0xE2>");
        // Byte-level BPE: 'â' (U+00E2) is byte E2, 'Ģ' (U+0122) is the 35th shifted byte, 0x80.
        assert_eq!(byte_level_bytes("âĢ"), Some(vec![0xE2, 0x80]));
        assert_eq!(byte_level_bytes("Ġthe"), Some(b" the".to_vec()));
        assert!(is_byte_token("<0x1F>"));
        assert!(!is_byte_token("<bos>"));
    }

    #[test]
    fn a_bundled_tokenizer_fragment_is_shown_by_bytes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bundled/models/base/tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(path).unwrap();
        let mut fragments = 0;
        for id in 0..tokenizer.get_vocab_size(true) as u32 {
            let t = token_text(&tokenizer, id);
            assert!(!t.contains('\u{FFFD}'), "token {id} shows as {t:?}");
            fragments += usize::from(t.contains("<0x"));
        }
        assert!(fragments > 0, "the byte-level vocabulary has partial-character tokens");
    }
}
