//! Times the capture forward (every layer's residual stream plus final hidden state) of a model on random
//! tokens: `cargo run --example forward_bench -- MODEL BATCH CONTEXT REPEATS [DEVICE [DTYPE]]`, DEVICE
//! `cpu` (default) or `cuda` (a build with `--features cuda`), DTYPE `float32` (default), `bfloat16` or
//! `float16`. Prints tokens/s.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use diffsql_model::pair::compute_dtype;
use diffsql_model::{load, ComputeDevice, ModelSource};

// The allocator the diffsql binary uses. Without it glibc's malloc returned each forward's large activation
// buffers to the OS and page-faulted them back in on the next, which cost up to 30% (it depended on what
// loading had freed before).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, batch, context, repeats, device, dtype) = match args.as_slice() {
        [_, m, b, c, r] => (m, b, c, r, "cpu", "float32"),
        [_, m, b, c, r, d] => (m, b, c, r, d.as_str(), "float32"),
        [_, m, b, c, r, d, t] => (m, b, c, r, d.as_str(), t.as_str()),
        _ => anyhow::bail!("usage: forward_bench MODEL BATCH CONTEXT REPEATS [DEVICE [DTYPE]]"),
    };
    let (batch, context, repeats): (usize, usize, usize) = (batch.parse()?, context.parse()?, repeats.parse()?);
    let device = diffsql_model::device::open(device.parse::<ComputeDevice>()?)?;
    let model = load(
        &ModelSource::parse(model)?,
        None,
        compute_dtype(
            diffsql_udfs::vector::ElementType::parse(dtype).context("DTYPE is float32, bfloat16 or float16")?,
        ),
        &device,
    )?;
    let vocab = model.decoder.spec().vocab as u32;
    let ids: Vec<u32> = (0..batch * context)
        .map(|i| (i as u32).wrapping_mul(2654435761) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, context), &device)?;
    let mask = Tensor::ones((batch, context), DType::U32, &device)?;
    let layers: Vec<usize> = (0..model.decoder.num_layers()).collect();
    model.decoder.forward(&ids, &mask, &layers, true)?; // warm-up
    device.synchronize()?;
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        let out = model.decoder.forward(&ids, &mask, &layers, true)?;
        device.synchronize()?;
        std::hint::black_box(&out);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{:.1} tokens/s ({batch}x{context}, best of {repeats}: {best:.3} s)",
        (batch * context) as f64 / best
    );
    Ok(())
}
