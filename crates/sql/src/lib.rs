//! diffsql's SQL layer: the session with diffsql's tables and functions, the cache's table providers and
//! scans ([`tables`]), the table functions (one file each), output formats, the shell engine, saved queries.
//!
//! May use: `diffsql-core`, `diffsql-udfs`, `diffsql-kernels`, `diffsql-model` (for `logit_lens` and the
//! intervention functions), `diffsql-train` (for the dictionary functions). May not use: preprocessing,
//! diffing or serving.

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
pub mod tables;

pub use output::Format;
pub use session::{
    open_session, open_session_with, register_model_functions, register_model_functions_with, run_statements, SqlAccess,
};
