//! Hydra-style configuration: TOML files under `configs/` plus `key=value` overrides, resolved in two stages.

pub mod catalogue;
pub mod compression;
pub mod device;
pub mod evaluation;
pub mod layers;
pub mod overrides;
pub mod plots;
pub mod resolve;
pub mod settings;
pub mod train;

pub use catalogue::{Catalogue, CatalogueCounts};
pub use compression::VectorCompression;
pub use device::ComputeDevice;
pub use evaluation::EvaluationConfig;
pub use overrides::{expand, parse_all, Group, Override};
pub use plots::{PlotKind, PlotSpec};
pub use resolve::ConfigDir;
pub use settings::{resolve_layers, LayerSpec, Mode, Settings};
pub use train::{DictionaryKind, SparsityKind, TrainConfig};
