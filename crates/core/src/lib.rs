//! diffsql's base layer: what every other crate agrees on, with no model, SQL engine or job in it.
//!
//! Owns the configuration ([`config`]: `key=value` overrides parsed without I/O, then resolved once into typed
//! settings), the activation cache on disk ([`cache`]: layout, manifests, atomic writes, locks, verification),
//! the Hugging Face hub cache ([`hub`]) and progress bars ([`progress`]).
//!
//! May use: `diffsql-udfs` (for the vector column format the cache stores), Arrow/Parquet for the files.
//! May not use: the model runtime, the SQL session, or any job crate (they all build on this one).

pub mod cache;
pub mod config;
pub mod hub;
pub mod progress;
