//! Times candle's f32 matrix product at the shapes of SmolLM2-135M's linear layers (1024 or 4096 tokens),
//! to check that the build profile gives gemm its full speed: `cargo run --example matmul_bench`. Prints
//! GFLOP/s, best of 20 after 3 warm-ups.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let shapes = [
        (1024, 576, 576),
        (1024, 576, 192),
        (1024, 576, 1536),
        (1024, 1536, 576),
        (4096, 576, 1536),
    ];
    for (m, k, n) in shapes {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        for _ in 0..3 {
            a.matmul(&b)?;
        }
        let mut best = f64::MAX;
        for _ in 0..20 {
            let start = Instant::now();
            std::hint::black_box(a.matmul(&b)?);
            best = best.min(start.elapsed().as_secs_f64());
        }
        let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
        println!("{m}×{k} · {k}×{n}: {gflops:.1} GFLOP/s");
    }
    Ok(())
}
