//! vit-prisma's SAE training step on the bench activations, timed like bench_saelens.py: batches
//! read sequentially from the memory-mapped data/acts.f32, one warm-up step, then STEPS timed.
//!
//! cargo run --release --example sae_train_bench -- ARCH EXPANSION K BATCH STEPS [dense]
//! (ARCH: topk | standard; `dense` uses dense products + autograd for TopK instead of the sparse step)

use prisma_core::sae::train::{SaeTrainConfig, SaeTrainer};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).cloned().unwrap_or_else(|| "topk".into());
    let expansion: i64 = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let k: f64 = args.get(3).map_or(Ok(64.0), |s| s.parse())?;
    let batch: i64 = args.get(4).map_or(Ok(4096), |s| s.parse())?;
    let steps: usize = args.get(5).map_or(Ok(5), |s| s.parse())?;
    let dense = args.get(6).is_some_and(|s| s == "dense");
    let threads: i32 = std::env::var("THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/sae/data");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("acts.json"))?)?;
    let (rows, d) = (meta["rows"].as_i64().unwrap_or(0), meta["d"].as_i64().unwrap_or(0));
    let file = std::fs::File::open(data.join("acts.f32"))?;
    // SAFETY: read-only map of a file nothing else writes during the bench.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let cfg: SaeTrainConfig = serde_json::from_value(serde_json::json!({
        "architecture": arch, "dIn": d, "expansionFactor": expansion, "k": k, "l1Coefficient": 5.0,
        "lr": 1e-4, "totalSteps": 1_000_000, "denseProducts": dense,
    }))?;
    let mut trainer = SaeTrainer::new(cfg)?;
    let mut pos = 0i64;
    let mut next = || -> Result<Tensor, Box<dyn std::error::Error>> {
        if pos + batch > rows {
            pos = 0;
        }
        let bytes = &map[(pos * d * 4) as usize..((pos + batch) * d * 4) as usize];
        pos += batch;
        Ok(Tensor::f_from_data_size(bytes, &[batch, d], tch::Kind::Float)?)
    };
    trainer.train_step(&next()?)?;
    let t0 = Instant::now();
    let mut mse = 0.0;
    for _ in 0..steps {
        mse = trainer.train_step(&next()?)?.mse_loss;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"impl": if dense { "vit-prisma (dense)" } else { "vit-prisma" }, "arch": arch, "expansion": expansion, "k": k,
            "batch": batch, "steps": steps, "seconds": secs, "tokens_per_s": steps as f64 * batch as f64 / secs, "last_mse": mse})
    );
    Ok(())
}
