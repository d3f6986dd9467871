//! diffsql's preprocessing: run the base model and an organism over datasets and fill the cache.
//!
//! May use: `diffsql-core` (settings, the cache's writers), `diffsql-model`, `diffsql-udfs`, `diffsql-kernels`.
//! May not use: SQL, training, diffing or serving.

pub mod final_hidden;
pub mod logit_diff;
pub mod next_token;
pub mod plan;
pub mod run;
pub mod sink;
pub mod summary;
pub mod top_k;

pub use run::{run, tokenize_datasets};
pub use summary::{Stages, Summary};
