//! diffsql's dictionaries: a crosscoder on (base, ft), a sparse autoencoder on ft − base, and PCA of ft − base,
//! trained on the cache and saved beside it as tables the SQL functions read.
//!
//! May use: `diffsql-core` (the cache's files, settings), `diffsql-kernels`, `diffsql-udfs` (the vector
//! format), candle. May not use: the model runtime, SQL, or the jobs above.

mod checkpoint;
mod coder;
pub mod data;
pub mod host;
pub mod pca;
mod request;
pub mod run;
pub mod schedule;
pub mod sparse_coder;
mod statistics;
pub mod store;

pub use run::{dictionary_name, ensure, Outcome, TrainRequest};
pub use store::{DictionaryId, DictionaryManifest};
