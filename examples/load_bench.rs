//! Times loading a model, stage by stage: `cargo run --example load_bench -- MODEL [REPEATS]` (a GGUF file,
//! a checkpoint directory or a hub id in the local cache). Prints the best of REPEATS (default 3) of:
//! opening (GGUF header or config.json, tokenizer.json, special tokens), reading the weights (for GGUF:
//! dequantising them to f32), and building the decoder from them.

use std::time::Instant;

use anyhow::Result;
use candle_core::DType;
use diffsql_model::{Decoder, ModelFiles, ModelSource};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, repeats) = match args.as_slice() {
        [_, m] => (m.clone(), 3),
        [_, m, r] => (m.clone(), r.parse()?),
        _ => anyhow::bail!("usage: load_bench MODEL [REPEATS]"),
    };
    let source = ModelSource::parse(&model)?;
    let mut best = [f64::MAX; 3];
    let mut values = 0usize;
    for _ in 0..repeats {
        let t = Instant::now();
        let files = ModelFiles::open(&source)?;
        let open = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let weights = files.read_weights(DType::F32)?;
        let read = t.elapsed().as_secs_f64();
        let t = Instant::now();
        Decoder::load(files.architecture.spec()?, &weights)?;
        let build = t.elapsed().as_secs_f64();
        values = weights.elem_count();
        for (b, v) in best.iter_mut().zip([open, read, build]) {
            *b = b.min(v);
        }
    }
    let gb = values as f64 * 4.0 / 1e9;
    println!(
        "{model}: open {:.2} s, weights {:.2} s ({values} values, {gb:.2} GB f32, {:.2} GB/s), decoder {:.2} s; \
         total {:.2} s (best of {repeats}, {} threads)",
        best[0],
        best[1],
        gb / best[1],
        best[2],
        best.iter().sum::<f64>(),
        rayon::current_num_threads()
    );
    Ok(())
}
