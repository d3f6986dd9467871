//! Agentic evaluation, as the reference toolkit runs it: an LLM agent reads a method's findings, asks both
//! models questions and queries the cache within budgets, and ends with a description of the finetune that
//! graders score against the organism's ground truth. This crate talks to LLMs only through an
//! OpenAI-compatible HTTP API ([`client`]); it runs no model of its own but the pair's, through diffsql-model.

pub mod agent;
pub mod client;
pub mod evaluation;
pub mod grader;
pub mod protocol;
pub mod tools;
