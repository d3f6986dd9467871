//! Where models run: `cpu` (always) or `cuda[:N]` (builds with the `cuda` cargo feature), named in
//! configs as `preprocessing.device` and checked when the config is read, before any model is loaded.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
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

impl ComputeDevice {
    /// Whether this build can run on CUDA GPUs.
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

    /// Opens the device. Without the `cuda` feature a CUDA device is an error that says how to rebuild.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !Self::CUDA_BUILT {
                    bail!(
                        "device {self} needs diffsql built with the cuda feature (cargo build --release --features cuda, on a machine with the CUDA toolkit); this build runs on the CPU only: set preprocessing.device=cpu"
                    );
                }
                open_cuda(ordinal)
            }
        }
    }
}

/// Opens CUDA device `ordinal` and runs one small matrix product on it, so that a device, driver or cuBLAS
/// that does not work shows up here as an error rather than later, mid-run. cudarc panics on some of these
/// failures; such a panic is caught and turned into the error.
fn open_cuda(ordinal: usize) -> Result<Device> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| -> candle_core::Result<Device> {
        let device = Device::new_cuda(ordinal)?;
        let x = Tensor::ones((2, 2), DType::F32, &device)?;
        x.matmul(&x)?.to_vec2::<f32>()?;
        Ok(device)
    });
    std::panic::set_hook(quiet);
    match opened {
        Ok(device) => device.with_context(|| {
            format!(
                "cannot open CUDA device {ordinal} (is there a GPU, and is its driver loaded? nvidia-smi lists them)"
            )
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            // cudarc's message goes on to list every file name it tried; the library's name is enough.
            let message = message.split(" - searched").next().unwrap_or(message);
            bail!(
                "cannot use CUDA device {ordinal}: {message}; put the directory holding the CUDA libraries (libcuda.so.1, libcublas.so.*, libcublasLt.so.*) on LD_LIBRARY_PATH"
            )
        }
    }
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

    #[test]
    fn cpu_always_opens() {
        assert!(ComputeDevice::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let e = ComputeDevice::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("preprocessing.device=cpu"),
            "{e}"
        );
    }
}
