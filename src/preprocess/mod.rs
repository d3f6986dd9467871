//! Preprocessing: run the base model and an organism over datasets and fill the cache.

pub mod final_hidden;
pub mod logit_diff;
pub mod next_token;
pub mod pair;
pub mod plan;
pub mod run;
pub mod sink;

pub use pair::{compute_dtype, load_pair, model_source, ModelPair, PairFiles};
pub use run::{run, tokenize_datasets, Summary};
