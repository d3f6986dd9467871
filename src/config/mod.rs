//! Hydra-style configuration: TOML files under `configs/` plus `key=value` overrides, resolved in two stages.

pub mod overrides;
pub mod resolve;
pub mod settings;
pub mod train;

pub use overrides::{expand, parse_all, Group, Override};
pub use resolve::ConfigDir;
pub use settings::{resolve_layers, LayerSpec, Mode, Settings};
pub use train::{DictionaryKind, SparsityKind, TrainConfig};
