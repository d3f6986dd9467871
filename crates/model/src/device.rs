//! Where models run: opens the [`ComputeDevice`] a config names: `cpu` always, `cuda[:N]` in builds with the
//! `cuda` cargo feature, checked with a probe product so a GPU that does not work is an error up front.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
pub use diffsql_core::config::ComputeDevice;

/// Whether this build can run on CUDA GPUs.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens the device. Without the `cuda` feature a CUDA device is an error that says how to rebuild.
pub fn open(device: ComputeDevice) -> Result<Device> {
    match device {
        ComputeDevice::Cpu => Ok(Device::Cpu),
        ComputeDevice::Cuda(ordinal) => {
            if !CUDA_BUILT {
                bail!(
                    "device {device} needs diffsql built with the cuda feature (cargo build --release --features cuda, on a machine with the CUDA toolkit); this build runs on the CPU only: set preprocessing.device=cpu"
                );
            }
            open_cuda(ordinal)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_opens() {
        assert!(open(ComputeDevice::Cpu).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let e = open(ComputeDevice::Cuda(0)).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("preprocessing.device=cpu"),
            "{e}"
        );
    }
}
