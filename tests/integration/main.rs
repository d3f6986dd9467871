//! All integration tests, in one test binary: SQL logic tests over synthetic caches, the cache's
//! writers and readers, and the `diffsql` binary driven as a user would.

mod agent;
mod cache;
#[cfg(feature = "cluster")]
mod cluster;
mod config;
mod dictionary;
mod diffing;
mod fixtures;
mod integrity;
mod model;
mod object_store;
mod preprocess;
mod python;
mod real_models;
mod serve;
mod shell;
mod slt;
