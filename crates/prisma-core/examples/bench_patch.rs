//! Core-only timing of one patching sweep (no Node):
//!   bench_patch MODEL_DIR PIXELS.safetensors WHAT BY [REPS]
//! Env: CHUNK=N sets the rows per batched block; ATTRIBUTION=1 times attribution patching instead and
//! also reports it in forward-equivalents (its time over a plain batch-1 forward's, alternated);
//! FAST_LINEAR=1 runs the sweep's linear layers on oneDNN (PatchOptions::fast_linear);
//! VALUES=FILE writes the sweep's values there as JSON; TARGET and BASELINE set the metric's classes
//! (default 1 and 2); LAYERS=a,b,... restricts the sweep to those layers.
use prisma_core::analysis::attribution::attribution_patching;
use prisma_core::analysis::metric::MetricSpec;
use prisma_core::analysis::patching::{activation_patching, PatchBy, PatchOptions, PatchResult, PatchWhat};
use prisma_core::tensor_file::read_tensor_file;
use prisma_core::{Model, RunRequest};
use std::time::Instant;
use tch::IndexOp;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let model = Model::load(std::path::Path::new(&a[1]), "cpu", "f32")?;
    let fast_linear = std::env::var("FAST_LINEAR").is_ok_and(|v| v == "1");
    // The thread count the Node binding uses for this model (one thread for tiny models).
    model.use_threads();
    let px = read_tensor_file(std::path::Path::new(&a[2]))?.into_iter().find(|(n, _)| n == "pixel_values").ok_or("no pixel_values")?.1;
    let what: PatchWhat = serde_json::from_str(&format!("\"{}\"", a[3]))?;
    let by: PatchBy = serde_json::from_str(&format!("\"{}\"", a[4]))?;
    let reps: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let chunk = std::env::var("CHUNK").ok().and_then(|c| c.parse().ok());
    let attribution = std::env::var("ATTRIBUTION").is_ok_and(|v| v == "1");
    let layers =
        std::env::var("LAYERS").ok().map(|v| v.split(',').map(|l| l.trim().parse()).collect::<Result<Vec<usize>, _>>()).transpose()?;
    let opts = PatchOptions {
        what,
        by,
        metric: MetricSpec { target: env_or("TARGET", 1), baseline: Some(env_or("BASELINE", 2)) },
        chunk,
        layers,
        fast_linear,
    };
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    let sweep = || -> Result<PatchResult, prisma_core::PrismaError> {
        if attribution {
            attribution_patching(&model, &clean, &corrupt, &opts)
        } else {
            activation_patching(&model, &clean, &corrupt, &opts)
        }
    };
    let forward = || -> Result<f64, prisma_core::PrismaError> {
        let t = Instant::now();
        model.run(RunRequest { pixels: Some(clean.shallow_clone()), ..Default::default() })?;
        Ok(t.elapsed().as_secs_f64())
    };
    sweep()?;
    forward()?;
    let (mut times, mut forwards) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    let mut values = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        values = sweep()?.value;
        times.push(t.elapsed().as_secs_f64());
        assert!(!values.is_empty());
        if attribution {
            forwards.push(forward()?);
        }
    }
    if let Ok(path) = std::env::var("VALUES") {
        // The last timed sweep's values, to compare engines (e.g. with and without FAST_LINEAR).
        std::fs::write(&path, serde_json::to_string(&values)?)?;
    }
    let kind = if attribution { "attribution" } else { "exact" };
    let best = times.iter().copied().fold(f64::MAX, f64::min);
    let sweep_median = median(times);
    let linears = if fast_linear { " (fast linear)" } else { "" };
    println!("{what:?} {by:?} {kind}{linears}: {reps} runs, best {best:.6} s, median {sweep_median:.6} s");
    if attribution {
        let fwd = median(forwards);
        println!("plain forward median {fwd:.5} s -> {:.2} forward-equivalents", sweep_median / fwd);
    }
    Ok(())
}
