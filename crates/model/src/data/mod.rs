//! Datasets: reading samples from local files or the hub cache, chat templates, and tokenisation.

pub mod chat;
pub mod source;
pub mod token_text;
pub mod tokenize;
