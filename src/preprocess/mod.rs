//! Preprocessing: run the base model and an organism over datasets and fill the cache.

pub mod final_hidden;
pub mod next_token;
pub mod run;

pub use run::{run, Summary};
