//! `diffsql serve`: a local web dashboard over the cache and the results folders (overview, method results with
//! sortable tables and interactive charts, a token browser, a read-only SQL console and a side-by-side chat).
//!
//! The top floor beside the binary: may use every library crate below it (core, model, train, sql, diffing);
//! nothing uses it but the binary.

mod agents;
mod assets;
mod catalog;
mod chat;
mod console;
mod context;
pub mod openai;
mod overview;
mod page;
mod results;
mod server;
mod state;
mod token_index;
mod tokens;

pub use server::{router, serve, ServeOptions};
pub use state::AppState;
