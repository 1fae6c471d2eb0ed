//! Core-only forward benchmark (no Node, no copies to JS): plain forward vs a hooked forward that
//! records every hook point, same model, same process. Usage: bench_forward MODEL_DIR [BATCH] [ITERS]
use prisma_core::{Model, RunRequest};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: bench_forward MODEL_DIR [BATCH] [ITERS]")?;
    let batch: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let iters: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let model = Model::load(std::path::Path::new(dir), "cpu", "f32")?;
    let c = &model.vit.cfg;
    let pixels = tch::Tensor::randn([batch, c.num_channels, c.image_size[0], c.image_size[1]], (tch::Kind::Float, tch::Device::Cpu));
    let time = |cache: Vec<String>| -> Result<f64, Box<dyn std::error::Error>> {
        // one warm-up run, then the median of `iters`
        model.run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: cache.clone(), ..Default::default() })?;
        let mut times = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            let out = model.run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: cache.clone(), ..Default::default() })?;
            drop(out);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    };
    let plain = time(vec![])?;
    let all = time(vec!["*".into()])?;
    println!(
        "{{\"model\":\"{dir}\",\"batch\":{batch},\"threads\":{},\"plain_ms\":{plain:.3},\"cache_all_ms\":{all:.3},\"ratio\":{:.3}}}",
        tch::get_num_threads(),
        all / plain
    );
    Ok(())
}
