//! diffsql on several machines, through datafusion-distributed: `diffsql worker` serves every diffsql function
//! and the cache scans over Arrow Flight, and a session given `--workers` plans as in one process and runs its
//! query's heavy stages (the scans and the partial aggregates above them) on the workers.
//!
//! Planning stays in the session: the tables read their manifests and verify the files there, and the
//! workers receive execution plans whose scans name their files (paths on a shared file system, or objects
//! of an `s3://` cache, which each worker opens with its own credentials).

pub mod codec;
pub mod dictionaries;
pub mod session;
pub mod tasks;
pub mod worker;

pub use session::{install, workers_from};
pub use worker::serve_worker;
