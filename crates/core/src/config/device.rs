//! The compute device a config names (`preprocessing.device`: `cpu`, `cuda`, `cuda:N`), as a plain value that is
//! parsed and checked when the config is read; opening it is the model runtime's job (`diffsql_model::device`).

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A compute device as configs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for ComputeDevice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let unknown = || anyhow::anyhow!("device {s:?} is not cpu, cuda or cuda:N (N a GPU ordinal)");
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(unknown)?;
                ordinal.parse().map(Self::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl TryFrom<String> for ComputeDevice {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ComputeDevice> for String {
    fn from(d: ComputeDevice) -> Self {
        d.to_string()
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals() {
        assert_eq!("cpu".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cpu);
        assert_eq!("cuda".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cuda(0));
        assert_eq!("cuda:3".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cuda(3));
        assert_eq!(ComputeDevice::Cuda(3).to_string(), "cuda:3");
    }

    #[test]
    fn rejects_other_names_listing_the_choices() {
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let e = bad.parse::<ComputeDevice>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("cpu, cuda or cuda:N"), "{e}");
        }
    }
}
