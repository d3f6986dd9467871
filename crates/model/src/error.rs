//! Errors as people read them: one line, the causes joined by `: `, without the backtraces candle attaches
//! when `RUST_BACKTRACE` is set. Every command, the shell, SQL table functions and the dashboard print errors
//! through [`one_line`].

/// An error and its causes on one line. A backtrace that candle attaches to its errors (when
/// `RUST_BACKTRACE` is set) is left out: it is for debuggers, not for the person reading the message.
pub fn one_line(e: &anyhow::Error) -> String {
    let message = |cause: &(dyn std::error::Error + 'static)| match cause.downcast_ref::<candle_core::Error>() {
        Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
        _ => cause.to_string(),
    };
    let causes: Vec<String> = e.chain().map(message).collect();
    causes.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_joins_causes_and_drops_candle_backtraces() {
        let candle = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("invalid device ordinal".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = anyhow::Error::from(candle).context("cannot open CUDA device 7");
        assert_eq!(one_line(&e), "cannot open CUDA device 7: invalid device ordinal");
        let plain = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(one_line(&plain), "outer: first second");
    }
}
