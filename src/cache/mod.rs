//! The activation cache on disk: its Hive-partitioned layout, manifests, writers, and DataFusion tables.

pub mod file_scan;
pub mod layout;
pub mod manifest;
pub mod planted;
pub mod scan;
pub mod synth;
pub mod tables;
pub mod vectors;
pub mod verify;
pub mod writer;

pub use layout::{CacheLayout, PartitionKey, Table};
pub use manifest::Manifest;
pub use writer::{ActivationBatch, ActivationWriter, PartitionWriter, WriteOptions};
