//! Where progress bars draw: on the terminal (stderr) by default, or, for an embedder such as the Python
//! package, into a process-wide observer that receives each rendered line — so the bars show in a Jupyter
//! notebook, whose cells see what Python writes but not the process's stderr.

use std::sync::{Arc, RwLock};

use indicatif::{ProgressBar, ProgressDrawTarget, TermLike};

/// Receives each rendered progress line (empty when a bar is cleared).
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

static OBSERVER: RwLock<Option<Observer>> = RwLock::new(None);

/// Sends every progress bar drawn from now on to `observer` (None: back to the terminal).
pub fn set_observer(observer: Option<Observer>) {
    *OBSERVER.write().unwrap_or_else(|e| e.into_inner()) = observer;
}

/// A progress bar of `len` steps drawing where [`set_observer`] says (5 redraws a second into an observer).
pub fn bar(len: u64) -> ProgressBar {
    let observer = OBSERVER.read().unwrap_or_else(|e| e.into_inner()).clone();
    match observer {
        Some(observer) => ProgressBar::with_draw_target(
            Some(len),
            ProgressDrawTarget::term_like_with_hz(Box::new(Forward { observer }), 5),
        ),
        None => ProgressBar::new(len),
    }
}

/// A terminal of one line that hands what is written on it to the observer.
struct Forward {
    observer: Observer,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forward")
    }
}

impl TermLike for Forward {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if !s.is_empty() {
            (self.observer)(s);
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        (self.observer)("");
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// With an observer, a bar's rendered lines (its message and position) reach it; without, none do.
    #[test]
    fn an_observer_receives_the_rendered_bar() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&seen);
        set_observer(Some(Arc::new(move |s: &str| sink.lock().unwrap().push(s.to_string()))));
        let bar = bar(10);
        bar.set_style(indicatif::ProgressStyle::with_template("{msg} {pos}/{len}").unwrap());
        bar.set_message("tokens");
        bar.set_position(7);
        bar.finish();
        set_observer(None);
        let seen = seen.lock().unwrap();
        assert!(seen.iter().any(|s| s.contains("tokens 7/10")), "{seen:?}");
        let quiet = super::bar(3);
        quiet.inc(1);
        quiet.finish_and_clear();
        assert!(!seen.iter().any(|s| s.contains("/3")));
    }
}
