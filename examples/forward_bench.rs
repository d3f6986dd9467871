//! Times the capture forward (every layer's residual stream plus final hidden state) of a model on random
//! tokens: `cargo run --example forward_bench -- MODEL BATCH CONTEXT REPEATS`. Prints tokens/s.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use diffsql::model::{load, ModelSource};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, batch, context, repeats] = args.as_slice() else {
        anyhow::bail!("usage: forward_bench MODEL BATCH CONTEXT REPEATS");
    };
    let (batch, context, repeats): (usize, usize, usize) = (batch.parse()?, context.parse()?, repeats.parse()?);
    let model = load(&ModelSource::parse(model)?, None, DType::F32)?;
    let vocab = model.decoder.spec().vocab as u32;
    let ids: Vec<u32> = (0..batch * context)
        .map(|i| (i as u32).wrapping_mul(2654435761) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, context), &Device::Cpu)?;
    let mask = Tensor::ones((batch, context), DType::U32, &Device::Cpu)?;
    let layers: Vec<usize> = (0..model.decoder.num_layers()).collect();
    model.decoder.forward(&ids, &mask, &layers, true)?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        let out = model.decoder.forward(&ids, &mask, &layers, true)?;
        std::hint::black_box(&out);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{:.1} tokens/s ({batch}x{context}, best of {repeats}: {best:.3} s)",
        (batch * context) as f64 / best
    );
    Ok(())
}
