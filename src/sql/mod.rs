//! SQL over a cache: the session with diffsql's tables and functions, output formats, the shell, saved queries.

pub mod args;
pub mod cache_info;
pub mod dictionary;
pub mod foreign;
pub mod intervene;
pub mod logit_lens;
pub mod nmf;
pub mod output;
pub mod queries;
pub mod session;
pub mod shell;

pub use output::Format;
pub use session::{open_session, open_session_with, register_model_functions, run_statements, SqlAccess};
