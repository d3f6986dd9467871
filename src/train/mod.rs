//! Dictionaries trained on the cache: a crosscoder on (base, ft), a sparse autoencoder on ft − base, and PCA
//! of ft − base, saved under the cache as tables the SQL functions read.

mod checkpoint;
pub mod data;
pub mod host;
pub mod pca;
pub mod run;
pub mod sparse_coder;
mod statistics;
pub mod store;

pub use run::{dictionary_name, ensure, Outcome, TrainRequest};
pub use store::{DictionaryId, DictionaryManifest};
