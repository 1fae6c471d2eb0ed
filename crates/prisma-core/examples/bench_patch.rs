//! Core-only timing of one patching sweep (no Node): bench_patch MODEL_DIR PIXELS.safetensors WHAT BY [REPS]
use prisma_core::analysis::metric::MetricSpec;
use prisma_core::analysis::patching::{activation_patching, PatchBy, PatchOptions, PatchWhat};
use prisma_core::tensor_file::read_tensor_file;
use prisma_core::Model;
use std::time::Instant;
use tch::IndexOp;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let model = Model::load(std::path::Path::new(&a[1]), "cpu", "f32")?;
    // The thread count the Node binding uses for this model (one thread for tiny models).
    model.use_threads();
    let px = read_tensor_file(std::path::Path::new(&a[2]))?.into_iter().find(|(n, _)| n == "pixel_values").ok_or("no pixel_values")?.1;
    let what: PatchWhat = serde_json::from_str(&format!("\"{}\"", a[3]))?;
    let by: PatchBy = serde_json::from_str(&format!("\"{}\"", a[4]))?;
    let reps: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let opts = PatchOptions { what, by, metric: MetricSpec { target: 1, baseline: Some(2) }, chunk: std::env::var("CHUNK").ok().and_then(|c| c.parse().ok()), layers: None };
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    activation_patching(&model, &clean, &corrupt, &opts)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let r = activation_patching(&model, &clean, &corrupt, &opts)?;
        times.push(t.elapsed().as_secs_f64());
        assert!(!r.value.is_empty());
    }
    times.sort_by(f64::total_cmp);
    println!("{:?} {:?}: {reps} runs, best {:.5} s, median {:.5} s", what, by, times[0], times[reps / 2]);
    Ok(())
}
