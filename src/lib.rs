//! diffsql: find out what a finetune changed in a language model, with SQL over an activation cache.
//!
//! Data flows one way: a cache of activations (Parquet, Hive-partitioned; [`cache`]) is opened as SQL
//! tables with the diffing functions of `diffsql-udfs` ([`sql`]).

pub mod cache;
pub mod config;
pub mod data;
pub mod diffing;
pub mod generation;
pub mod hub;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod serve;
pub mod sql;
pub mod train;
