//! diffsql: find out what a finetune changed in a language model, with SQL over an activation cache.
//!
//! This crate is the top of the workspace: [`pipeline`] is what `diffsql preprocess` and `diffsql run` do
//! per resolved config (the binary and the Python package both call it). Everything else lives in the
//! layers below, each a crate that may use only those under it:
//!
//! | crate | owns |
//! |---|---|
//! | `diffsql-kernels` | numeric loops over `f32` slices (reductions, softmax, KL, top-k, transposes, NMF, sparse coder steps) |
//! | `diffsql-udfs` | the DataFusion scalar and aggregate functions and the vector column format they read |
//! | `diffsql-core` | configuration, the cache's layout, manifests, atomic writes, locks and checks, the hub cache |
//! | `diffsql-model` | model families, weights, LoRA, GGUF, the base/organism pair loader, datasets, generation |
//! | `diffsql-train` | dictionaries (crosscoder, SAE, PCA) trained on the cache |
//! | `diffsql-sql` | the SQL session, the cache's tables and scans, table functions, saved queries, the shell |
//! | `diffsql-preprocess` | running both models over datasets into the cache |
//! | `diffsql-diffing` | diffing methods as saved SQL, their results, charts and reports |
//! | `diffsql-serve` | the dashboard |
//! | `diffsql-cluster` | `diffsql worker` and sessions that run their heavy stages on workers (datafusion-distributed) |

pub mod pipeline;
