//! Errors as people read them: one line, the causes joined by `: ` (each said once), without the backtraces candle attaches
//! when `RUST_BACKTRACE` is set. Every command, the shell, SQL table functions and the dashboard print errors
//! through [`one_line`].

/// An error and its causes on one line. A backtrace that candle attaches to its errors (when
/// `RUST_BACKTRACE` is set) is left out: it is for debuggers, not for the person reading the message.
pub fn one_line(e: &anyhow::Error) -> String {
    let message = |cause: &(dyn std::error::Error + 'static)| match cause.downcast_ref::<candle_core::Error>() {
        Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
        _ => cause.to_string(),
    };
    // DataFusion's errors print their source inside their own message: a cause its outer message already
    // says is said once.
    let mut causes: Vec<String> = Vec::new();
    for cause in e.chain().map(message) {
        if !causes.last().is_some_and(|outer| outer.contains(cause.as_str())) {
            causes.push(cause);
        }
    }
    let line = causes.join(": ").replace('\n', " ");
    if let Some(better) = REWRITER.get().and_then(|rewrite| rewrite(&line)) {
        return better;
    }
    unreachable_worker(&line).unwrap_or(line)
}

/// A layer above this one that can say an error better (the cluster names a worker that died mid-query).
pub type ErrorRewriter = fn(&str) -> Option<String>;

static REWRITER: std::sync::OnceLock<ErrorRewriter> = std::sync::OnceLock::new();

/// Installs the process's [`ErrorRewriter`] (the first call wins).
pub fn set_error_rewriter(rewrite: ErrorRewriter) {
    REWRITER.set(rewrite).ok();
}

/// A cluster worker that could not be reached, said once: the distributed engine repeats its transport
/// error through every layer of the plan.
fn unreachable_worker(line: &str) -> Option<String> {
    const MARK: &str = "Distributed DataFusion worker on '";
    let start = line.find(MARK)? + MARK.len();
    let url = line[start..].split('\'').next()?.trim_end_matches('/');
    let why = if line.contains("Connection refused") {
        "connection refused"
    } else if line.contains("timed out") || line.contains("Timeout") {
        "timed out"
    } else {
        "transport error"
    };
    Some(format!(
        "worker {url} cannot be reached ({why}): start it with `diffsql worker --listen HOST:PORT`, or leave it out of --workers"
    ))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_unreachable_cluster_worker_is_named_once() {
        let repeated = "tonic::transport::Error(Transport, ConnectError(\"tcp connect error\", 127.0.0.1:9, Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })) caused by Execution error: Error connecting to Distributed DataFusion worker on 'http://127.0.0.1:9/': transport error";
        let line = one_line(&anyhow::anyhow!("{repeated} caused by {repeated}"));
        assert_eq!(
            line,
            "worker http://127.0.0.1:9 cannot be reached (connection refused): start it with `diffsql worker --listen HOST:PORT`, or leave it out of --workers"
        );
    }

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

    #[test]
    fn a_cause_its_outer_message_already_says_is_said_once() {
        // As DataFusion's schema errors chain: the outer message prints its source.
        let inner = std::io::Error::other("No field named x.");
        let e = anyhow::Error::new(inner).context("Schema error: No field named x.");
        assert_eq!(one_line(&e), "Schema error: No field named x.");
        let e = anyhow::anyhow!("the cause").context("outer").context("cannot run");
        assert_eq!(one_line(&e), "cannot run: outer: the cause");
    }
}
