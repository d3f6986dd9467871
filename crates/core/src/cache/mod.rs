//! The activation cache on disk or on an object store: its Hive-partitioned layout, manifests, atomic writers
//! and file checks (the DataFusion tables over it are `diffsql-sql`'s).

pub mod atomic;
mod file_writer;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod object;
pub mod partition;
pub mod planted;
pub mod source;
pub mod synth;
pub mod vector_pages;
pub mod vectors;
pub mod verify;
pub mod writer;

pub use layout::{CacheLayout, PartitionKey, Table};
pub use manifest::Manifest;
pub use writer::{ActivationBatch, ActivationWriter, PartitionWriter, WriteOptions};
