//! The native half of the GPU kit (bench/gpu/run.sh runs it; docs/benchmarks.md, "GPU"). Built here,
//! run on a machine with neither Rust nor Node against that machine's own torch/lib.
//!
//!   gpu_kit check --device cuda|cpu [--short] --big DIR --work DIR   -> WORK/kit.json
//!   gpu_kit summarise --work DIR [--kit-bytes N]                     -> the one JSON summary
//!
//! `check` compares every hook, sweep, attribution, lens and DLA on DEVICE with the CPU, half
//! precision with fp32, exercises what must differ on CUDA, and times our side of the benchmarks on
//! BIG (the random ViT-B/16 on the GPU; a small committed model in short mode). It writes the pixels
//! it used (WORK/pixels.safetensors) so the Python peers run on the same input. `summarise` joins
//! kit.json with the peers' results (WORK/py/*.json) into one document on stdout.
use prisma_core::analysis::attribution::attribution_patching;
use prisma_core::analysis::dla::{direct_logit_attribution, DlaOptions};
use prisma_core::analysis::lens::{logit_lens, LensOptions, LensSite};
use prisma_core::analysis::metric::MetricSpec;
use prisma_core::analysis::patching::{activation_patching, PatchBy, PatchOptions, PatchResult, PatchWhat};
use prisma_core::interventions::InterventionSpec;
use prisma_core::model::to_f32_vec;
use prisma_core::{Model, RunRequest};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, IndexOp, Kind, Tensor};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// CUDA fp32 against CPU fp32 on the fixtures (the project's fidelity claim against transformers).
const FIXTURE_TOL: f64 = 1e-4;
/// Relative L2 error allowed for a whole hook in half precision: 32 units of rounding of the type
/// (bf16 2^-8, fp16 2^-11), i.e. a dozen layers' worth of per-op rounding, not a wrong kernel.
fn half_limit(kind: Kind) -> f64 {
    32.0 * if kind == Kind::BFloat16 { 2f64.powi(-8) } else { 2f64.powi(-11) }
}
/// The card's bf16 dense peak as measured on the lent H200 (device notes: 769-798 TFLOP/s).
const BF16_PEAK_TFLOPS: f64 = 790.0;

struct Checks(Vec<Value>);

impl Checks {
    fn add(&mut self, name: &str, pass: bool, detail: Value) {
        eprintln!("[gpu_kit] {} {name}", if pass { "ok  " } else { "FAIL" });
        self.0.push(json!({ "name": name, "pass": pass, "detail": detail }));
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let work = PathBuf::from(arg(&args, "--work").ok_or("--work DIR is required")?);
    match args.get(1).map(String::as_str) {
        Some("check") => {
            let device = arg(&args, "--device").unwrap_or_else(|| "cuda".into());
            let big = PathBuf::from(arg(&args, "--big").ok_or("--big DIR is required")?);
            let short = args.iter().any(|a| a == "--short");
            let report = check(&device, short, &big, &work)?;
            std::fs::write(work.join("kit.json"), serde_json::to_string_pretty(&report)?)?;
            Ok(())
        }
        Some("summarise") => {
            let kit_bytes = arg(&args, "--kit-bytes").and_then(|s| s.parse::<u64>().ok());
            let summary = summarise(&work, kit_bytes)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            if summary["pass"] != json!(true) {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => Err("usage: gpu_kit check|summarise ... (see the file's header)".into()),
    }
}

fn repo_root() -> PathBuf {
    // run.sh runs from the repository root.
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `reps` timed calls after one untimed warm-up, the device synchronised around each.
fn time<T>(device: Device, reps: usize, mut f: impl FnMut() -> Res<T>) -> Res<(f64, T)> {
    f()?;
    sync(device);
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let out = f()?;
        sync(device);
        times.push(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last.ok_or("no run")?))
}

/// Largest |a - b|. Equal infinities (a masked attention score) agree; NaN or one-sided infinity
/// anywhere counts as infinite, so it can never pass a tolerance.
fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) })
}

fn values(t: &Tensor) -> Res<Vec<f64>> {
    Ok(to_f32_vec(t)?.1.into_iter().map(f64::from).collect())
}

/// ||a - b|| / ||b|| over the whole tensor; equal infinities (masked scores) are left out, NaN or
/// one-sided infinity makes it infinite.
fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        if x.is_infinite() && x == y {
            continue;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    let r = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    if r.is_nan() {
        f64::INFINITY
    } else {
        r
    }
}

fn spread(v: &[f64]) -> f64 {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (hi - lo).max(f64::MIN_POSITIVE)
}

/// Hook name -> host values, in the model's order.
type Hooks = Vec<(String, Vec<f64>)>;

/// Every hook (and the output) of one forward, by name, as host values; and the output's name.
fn all_hooks(model: &Model, pixels: &Tensor) -> Res<(Hooks, String)> {
    let out = model.run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["*".into()], ..Default::default() })?;
    let mut hooks = Vec::with_capacity(out.cache.len() + 1);
    for (point, t) in &out.cache {
        if t.device() != model.info.device {
            return Err(format!("{point} was cached on {:?}, the model is on {:?}", t.device(), model.info.device).into());
        }
        hooks.push((point.to_string(), values(t)?));
    }
    let output = out.output_name.to_string();
    if !hooks.iter().any(|(n, _)| *n == output) {
        hooks.push((output.clone(), values(&out.output)?));
    }
    Ok((hooks, output))
}

fn load(dir: &Path, device: &str, dtype: &str) -> Res<Model> {
    let mut model = Model::load(dir, device, dtype)?;
    if model.text.is_some() {
        // A CLIP model's text hooks run on class prompts.
        model.set_class_prompts(vec!["red".into(), "blue".into()], vec!["a red cube".into(), "a blue sphere".into()])?;
    }
    Ok(model)
}

/// The fixture's own input (fixtures/reference/NAME.safetensors), one image or clip.
fn fixture_pixels(name: &str) -> Res<Tensor> {
    let file = repo_root().join("fixtures/reference").join(format!("{name}.safetensors"));
    let px = prisma_core::tensor_file::read_tensor_file(&file)?
        .into_iter()
        .find(|(n, _)| n == "pixel_values")
        .ok_or_else(|| format!("{}: no pixel_values", file.display()))?
        .1;
    Ok(px.i(0..1))
}

/// Every hook of `model_dir` on `device` against the CPU in fp32, and in bf16 / fp16 against fp32
/// on the device.
fn compare_hooks(checks: &mut Checks, label: &str, dir: &Path, pixels: &Tensor, device: &str, tol: Option<f64>) -> Res<Value> {
    let cpu = load(dir, "cpu", "f32")?;
    let dev = load(dir, device, "f32")?;
    let (want, output) = all_hooks(&cpu, pixels)?;
    let got: HashMap<String, Vec<f64>> = all_hooks(&dev, pixels)?.0.into_iter().collect();
    // Every hook point the model lists was recorded (the output is one of them or comes on top).
    let exposed = dev.hook_points().iter().filter(|p| want.iter().any(|(n, _)| *n == p.to_string())).count();
    let listed = dev.hook_points().len();
    let (mut worst, mut worst_hook, mut compared) = (0f64, String::new(), 0);
    for (name, w) in &want {
        let d = got.get(name).map_or(f64::INFINITY, |g| max_abs(g, w));
        compared += 1;
        if d > worst || d.is_infinite() {
            worst = d;
            worst_hook = name.clone();
        }
    }
    let all = exposed == listed && compared == want.len();
    let mut fidelity = json!({ "hooks": listed, "compared": compared, "max_abs_diff": worst, "worst_hook": worst_hook });
    match tol {
        Some(tol) => checks.add(
            &format!("fidelity {label}: {device} f32 = cpu f32 at every hook (<= {tol:e})"),
            all && worst <= tol,
            fidelity.clone(),
        ),
        None => checks.add(
            &format!("fidelity {label}: every hook on {device} is finite and compared (figure stated)"),
            all && worst.is_finite(),
            fidelity.clone(),
        ),
    }
    let reference: HashMap<String, Vec<f64>> = got;
    let mut dtypes = serde_json::Map::new();
    for (dtype, kind) in [("bf16", Kind::BFloat16), ("f16", Kind::Half)] {
        let half = load(dir, device, dtype)?;
        let limit = half_limit(kind);
        let (mut worst, mut worst_hook) = (0f64, String::new());
        let mut logits = f64::NAN;
        for (name, h) in all_hooks(&half, pixels)?.0 {
            let r = reference.get(&name).map_or(f64::INFINITY, |f| rel_l2(&h, f));
            if name == output {
                logits = r;
            }
            if r > worst {
                worst = r;
                worst_hook = name;
            }
        }
        let d = json!({ "max_rel_l2": worst, "worst_hook": worst_hook, "output_rel_l2": logits, "limit": limit });
        checks.add(&format!("{dtype} {label}: every hook within {limit:.3} relative (L2) of f32 on {device}"), worst <= limit, d.clone());
        dtypes.insert(dtype.into(), d);
    }
    fidelity["half"] = Value::Object(dtypes);
    Ok(fidelity)
}

fn patch_opts(what: PatchWhat, by: PatchBy, metric: MetricSpec, layers: Option<Vec<usize>>) -> PatchOptions {
    PatchOptions { what, by, metric, chunk: None, layers, fast_linear: false }
}

/// Sweeps, attribution, lens and DLA on `device` against the CPU.
fn compare_analyses(
    checks: &mut Checks,
    label: &str,
    cpu: &Model,
    dev: &Model,
    px: &Tensor,
    layers: Option<Vec<usize>>,
    tol: f64,
) -> Res<Value> {
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    let metric = pick_metric(cpu, px)?;
    let target = metric.target;
    let mut out = serde_json::Map::new();
    let mut one = |checks: &mut Checks, name: &str, a: Vec<f64>, b: Vec<f64>| {
        let d = max_abs(&a, &b);
        let detail = json!({ "values": a.len(), "max_abs_diff": d, "spread": spread(&b), "tolerance": tol });
        checks.add(&format!("{name} {label}: {} = cpu (<= {tol:e})", dev.device_name()), d <= tol && !a.is_empty(), detail.clone());
        out.insert(name.into(), detail);
    };
    for (name, what, by, l) in [
        ("patch resid_pre layer x pos", PatchWhat::ResidPre, PatchBy::LayerPos, layers.clone()),
        ("patch head z layer x head", PatchWhat::HeadZ, PatchBy::LayerHead, None),
    ] {
        let o = patch_opts(what, by, metric, l);
        one(checks, name, activation_patching(dev, &clean, &corrupt, &o)?.value, activation_patching(cpu, &clean, &corrupt, &o)?.value);
    }
    let o = patch_opts(PatchWhat::ResidPre, PatchBy::LayerPos, metric, None);
    one(
        checks,
        "attribution resid_pre",
        attribution_patching(dev, &clean, &corrupt, &o)?.value,
        attribution_patching(cpu, &clean, &corrupt, &o)?.value,
    );
    let lens = |m: &Model| -> Res<Vec<f64>> {
        let opts = LensOptions { target: Some(target), sites: vec![LensSite::ResidPre, LensSite::ResidPost], top_k: 3 };
        let r = logit_lens(m, px, &[None, None], &opts)?;
        Ok(r.iter().flat_map(|i| i.layers.iter().flat_map(|l| l.pos_target_logit.iter().copied().chain([l.target_logit]))).collect())
    };
    one(checks, "logit lens", lens(dev)?, lens(cpu)?);
    let dla = |m: &Model| -> Res<Vec<f64>> {
        let r = direct_logit_attribution(m, &clean, &DlaOptions { metric, per_position: true })?;
        let mut v: Vec<f64> = r.components.iter().map(|c| c.value).collect();
        v.extend(r.head_positions.unwrap_or_default());
        v.push(r.logit);
        Ok(v)
    };
    one(checks, "dla", dla(dev)?, dla(cpu)?);
    Ok(Value::Object(out))
}

/// What must behave differently, or be placed right, on a GPU.
fn device_specifics(checks: &mut Checks, dev: &Model, cpu: &Model, px: &Tensor) -> Res<Value> {
    let device = dev.info.device;
    let on_gpu = device != Device::Cpu;
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    let metric = MetricSpec { target: 0, baseline: Some(1) };
    // The oneDNN linear shim is CPU-only: asked on a GPU model it is refused with E_ARGUMENT.
    let mut o = patch_opts(PatchWhat::HeadZ, PatchBy::LayerHead, metric, None);
    o.fast_linear = true;
    let refused = activation_patching(dev, &clean, &corrupt, &o);
    let onednn = match (&refused, on_gpu) {
        (Err(e), true) => {
            let msg = e.to_string();
            checks.add("fast linear (oneDNN) refused on a GPU model", e.code() == "E_ARGUMENT", json!({ "error": msg }));
            json!({ "refused": msg })
        }
        (Ok(_), true) => {
            checks.add("fast linear (oneDNN) refused on a GPU model", false, json!("it ran"));
            json!("ran on the GPU")
        }
        (r, false) => json!({ "cpu": if r.is_ok() { "runs" } else { "unavailable" } }),
    };
    // Interventions whose values come from the host (a tensor given as data) are moved to the model.
    let cache =
        cpu.run(RunRequest { pixels: Some(clean.shallow_clone()), cache: vec!["blocks.0.hook_resid_post".into()], ..Default::default() })?;
    let clean_resid = cache.cache.first().ok_or("nothing cached")?.1.shallow_clone();
    let spec: Vec<InterventionSpec> = Model::parse_interventions(
        r#"[{"hook":"blocks.0.hook_resid_post","action":"set","tensor":"clean"},{"hook":"blocks.0.attn.hook_z","select":{"head":[0]},"action":"zero"}]"#,
    )?;
    let run = |m: &Model| -> Res<Vec<f64>> {
        let tensors = HashMap::from([("clean".to_string(), clean_resid.shallow_clone())]);
        let out = m.run(RunRequest {
            pixels: Some(corrupt.shallow_clone()),
            interventions: spec.clone(),
            tensors,
            cache: vec!["blocks.1.hook_resid_pre".into()],
            ..Default::default()
        })?;
        let placed = out.cache.iter().all(|(_, t)| t.device() == m.info.device) && out.output.device() == m.info.device;
        if !placed {
            return Err("a cached tensor or the output is not on the model's device".into());
        }
        values(&out.output)
    };
    let d = max_abs(&run(dev)?, &run(cpu)?);
    checks.add("interventions with host tensors, caches on the model's device", d <= FIXTURE_TOL, json!({ "max_abs_diff": d }));
    // Attribution (autograd) right after inference-mode analyses on the same thread.
    let o = patch_opts(PatchWhat::ResidPre, PatchBy::LayerPos, metric, None);
    let _ = logit_lens(dev, px, &[None, None], &LensOptions { target: Some(0), sites: vec![LensSite::ResidPost], top_k: 1 })?;
    let a = attribution_patching(dev, &clean, &corrupt, &o)?.value;
    let b = attribution_patching(cpu, &clean, &corrupt, &o)?.value;
    let d = max_abs(&a, &b);
    checks.add(
        "autograd after inference mode (attribution after the lens)",
        d <= FIXTURE_TOL && !a.is_empty(),
        json!({ "max_abs_diff": d }),
    );
    Ok(json!({ "onednn": onednn, "interventions_max_abs_diff": d }))
}

fn loaded_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.contains("libtorch")).map(String::from).collect();
    libs.sort();
    libs.dedup();
    libs
}

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn environment(checks: &mut Checks, device: &str) -> Res<Value> {
    let lib = prisma_core::libtorch_lib_dir().map(|d| d.display().to_string());
    let parsed = prisma_core::device::parse_device(device);
    let libs = loaded_libraries();
    let cuda = device.starts_with("cuda");
    if cuda {
        let want = lib.as_deref().map(|l| format!("{l}/libtorch_cuda.so")).unwrap_or_default();
        checks.add(
            "libtorch_cuda dlopened from PRISMA_LIBTORCH_LIB",
            parsed.is_ok() && libs.iter().any(|l| same_file(l, &want)),
            json!({ "wanted": want, "loaded": libs, "error": parsed.as_ref().err().map(|e| e.to_string()) }),
        );
    }
    let tf32 = prisma_core::device::tf32_state();
    if cuda {
        // fp32 means fp32: TF32 convolutions (libtorch's default for cuDNN) would miss the 1e-4 claim.
        checks.add(
            "fp32 on CUDA is IEEE (no TF32) for convolutions and matmuls",
            !tf32.conv && !tf32.matmul && tf32.consistent,
            json!({ "tf32_conv": tf32.conv, "tf32_matmul": tf32.matmul, "settings_consistent": tf32.consistent }),
        );
    }
    Ok(json!({
        "device": device,
        "libtorch_lib": lib,
        "libtorch_loaded": libs,
        "cuda_devices": tch::Cuda::device_count(),
        "cudnn": tch::Cuda::cudnn_is_available(),
        "threads": tch::get_num_threads(),
        "tf32": { "conv": tf32.conv, "matmul": tf32.matmul, "settings_consistent": tf32.consistent },
    }))
}

/// FLOPs of one block on `rows` sequences (multiply-adds count 2; attention's two products included).
fn block_flops(m: &Model) -> f64 {
    let c = &m.vit.cfg;
    let (n, d, f) = (c.n_pos() as f64, c.d_model as f64, c.d_mlp as f64);
    let mlp = if c.gated_mlp { 3.0 } else { 2.0 } * d * f;
    2.0 * n * (4.0 * d * d + mlp) + 4.0 * n * n * d
}

fn forward_flops(m: &Model) -> f64 {
    let c = &m.vit.cfg;
    let embed = 2.0 * (c.n_patches() * c.d_model * c.num_channels * c.patch_size * c.patch_size) as f64;
    embed + c.n_layers as f64 * block_flops(m) + 2.0 * (c.d_model * c.n_classes) as f64
}

/// Lower bound on a sweep's matrix work: each patched run counted from its layer through the
/// second-to-last (the engine runs the last block for the class token only), references excluded.
fn sweep_flops(m: &Model, r: &PatchResult) -> f64 {
    let n_layers = m.vit.cfg.n_layers;
    let per_layer = r.patched_runs as f64 / r.layers.len().max(1) as f64;
    r.layers.iter().map(|&l| per_layer * n_layers.saturating_sub(l + 1) as f64 * block_flops(m)).sum()
}

/// Our side of the speed table on the big model: sweeps, attribution and forward throughput.
fn speed(device: &str, short: bool, big: &Path, px: &Tensor, metric: MetricSpec) -> Res<Value> {
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    let reps = if short { 1 } else { 5 };
    let batch = if short { 8 } else { 64 };
    let mut out = serde_json::Map::new();
    let mut fp32_values: HashMap<&str, Vec<f64>> = HashMap::new();
    for dtype in ["f32", "bf16"] {
        let m = Model::load(big, device, dtype)?;
        m.use_threads();
        let dev = m.info.device;
        let mut d = serde_json::Map::new();
        for (key, what, by, attribution) in [
            ("resid", PatchWhat::ResidPre, PatchBy::LayerPos, false),
            ("head", PatchWhat::HeadZ, PatchBy::LayerHead, false),
            ("attribution", PatchWhat::ResidPre, PatchBy::LayerPos, true),
        ] {
            let o = patch_opts(what, by, metric, None);
            let (s, r) = time(dev, reps, || {
                Ok(if attribution {
                    attribution_patching(&m, &clean, &corrupt, &o)?
                } else {
                    activation_patching(&m, &clean, &corrupt, &o)?
                })
            })?;
            let flops = if attribution { 0.0 } else { sweep_flops(&m, &r) };
            let mut e = json!({ "seconds": s, "target": metric.target, "baseline": metric.baseline, "dims": r.dims,
                "patched_runs": r.patched_runs, "batched_forwards": r.batched_forwards, "clean_metric": r.clean.value, "corrupt_metric": r.corrupt.value });
            if flops > 0.0 {
                e["tflops_lower_bound"] = json!(flops / s / 1e12);
                e["share_of_bf16_peak"] = json!(flops / s / 1e12 / BF16_PEAK_TFLOPS);
            }
            if dtype == "f32" {
                fp32_values.insert(key, r.value.clone());
            } else if let Some(f) = fp32_values.get(key) {
                e["max_abs_diff_vs_f32"] = json!(max_abs(&r.value, f));
                e["f32_spread"] = json!(spread(f));
            }
            e["values"] = json!(r.value);
            d.insert(key.into(), e);
        }
        let (fwd1, _) = time(dev, reps.max(3), || Ok(m.run(RunRequest { pixels: Some(clean.shallow_clone()), ..Default::default() })?))?;
        if let Some(a) = d.get_mut("attribution") {
            a["forward_equivalents"] = json!(a["seconds"].as_f64().unwrap_or(f64::NAN) / fwd1);
        }
        let c = &m.vit.cfg;
        let many = Tensor::randn([batch, c.num_channels, c.image_size[0], c.image_size[1]], (Kind::Float, Device::Cpu))
            .to_device(dev)
            .to_kind(m.info.kind);
        let (s, _) = time(dev, reps.max(3), || Ok(m.run(RunRequest { pixels: Some(many.shallow_clone()), ..Default::default() })?))?;
        let tflops = forward_flops(&m) * batch as f64 / s / 1e12;
        d.insert(
            "forward".into(),
            json!({ "batch": batch, "seconds": s, "images_per_s": batch as f64 / s, "tflops": tflops,
                "share_of_bf16_peak": tflops / BF16_PEAK_TFLOPS, "batch1_seconds": fwd1 }),
        );
        out.insert(if dtype == "f32" { "fp32".into() } else { "bf16".into() }, Value::Object(d));
    }
    out.insert("metric".into(), json!({ "target": metric.target, "baseline": metric.baseline }));
    Ok(Value::Object(out))
}

/// Clean top-1 against corrupt top-1 (the next class when they agree), from fp32 CPU logits, so
/// every dtype, device and the Python peers track the same difference.
fn pick_metric(cpu: &Model, px: &Tensor) -> Res<MetricSpec> {
    let logits = cpu.run(RunRequest { pixels: Some(px.shallow_clone()), ..Default::default() })?.output;
    let target = logits.i(0).argmax(0, false).int64_value(&[]);
    let mut baseline = logits.i(1).argmax(0, false).int64_value(&[]);
    if baseline == target {
        baseline = (target + 1) % logits.size()[1];
    }
    Ok(MetricSpec { target, baseline: Some(baseline) })
}

const FIXTURES: &[&str] = &[
    "vit-tiny-cls",
    "vit-tiny-base",
    "vit-odd",
    "clip-tiny",
    "openclip-tiny",
    "openclip-tiny-bin",
    "timm-vit-tiny",
    "timm-vit-gap",
    "dinov2-reg-tiny",
    "dinov2-swiglu-tiny",
    "videomae-tiny",
    "vivit-tiny",
];

fn check(device: &str, short: bool, big: &Path, work: &Path) -> Res<Value> {
    std::fs::create_dir_all(work)?;
    let mut checks = Checks(Vec::new());
    let env = environment(&mut checks, device)?;
    tch::manual_seed(0);
    let fixtures_dir = repo_root().join("fixtures/models");
    let mut fidelity = serde_json::Map::new();
    for name in FIXTURES {
        // openclip-tiny-bin shares openclip-tiny's input (its weights as a pickle).
        let px = fixture_pixels(name.trim_end_matches("-bin"))?;
        fidelity.insert((*name).into(), compare_hooks(&mut checks, name, &fixtures_dir.join(name), &px, device, Some(FIXTURE_TOL))?);
    }
    // The big model: its own pixels, written for the Python peers (clean = 0, corrupt = 1).
    let big_cpu = Model::load(big, "cpu", "f32")?;
    let c = &big_cpu.vit.cfg;
    let px = Tensor::randn([2, c.num_channels, c.image_size[0], c.image_size[1]], (Kind::Float, Device::Cpu));
    prisma_core::sae::saelens::write_safetensors(&work.join("pixels.safetensors"), &[("pixel_values", px.shallow_clone())])?;
    fidelity.insert("big".into(), compare_hooks(&mut checks, "big", big, &px.i(0..1), device, None)?);
    let big_dev = Model::load(big, device, "f32")?;
    // The CPU side of the big model's resid sweep is limited to two layers (its full sweep is
    // minutes on a CPU); the head sweep, attribution, lens and DLA run whole.
    let n = c.n_layers;
    let layers = if n > 2 { Some(vec![n / 2, n - 1]) } else { None };
    let tiny = |d: &str| Model::load(&fixtures_dir.join("vit-tiny-cls"), d, "f32");
    let tiny_px = repo_root().join("fixtures/reference/vit-tiny-cls.safetensors");
    let tiny_px =
        prisma_core::tensor_file::read_tensor_file(&tiny_px)?.into_iter().find(|(n, _)| n == "pixel_values").ok_or("no pixels")?.1.i(0..2);
    let mut analyses = serde_json::Map::new();
    analyses.insert(
        "vit-tiny-cls".into(),
        compare_analyses(&mut checks, "vit-tiny-cls", &tiny("cpu")?, &tiny(device)?, &tiny_px, None, FIXTURE_TOL)?,
    );
    // On the big model the tolerance is relative to what the sweep moves (chaos is the model's).
    let big_analyses = compare_analyses(&mut Checks(Vec::new()), "big", &big_cpu, &big_dev, &px, layers, f64::INFINITY)?;
    for (name, v) in big_analyses.as_object().into_iter().flatten() {
        let rel = v["max_abs_diff"].as_f64().unwrap_or(f64::INFINITY) / v["spread"].as_f64().unwrap_or(f64::MIN_POSITIVE);
        checks.add(&format!("{name} big: {device} = cpu within 1e-3 of its spread"), rel <= 1e-3, v.clone());
    }
    analyses.insert("big".into(), big_analyses);
    let specifics = device_specifics(&mut checks, &tiny(device)?, &tiny("cpu")?, &tiny_px)?;
    let metric = pick_metric(&big_cpu, &px)?;
    drop((big_cpu, big_dev));
    let speed = speed(device, short, big, &px, metric)?;
    let pass = checks.0.iter().all(|c| c["pass"] == json!(true));
    Ok(json!({
        "mode": if short { "short" } else { "full" },
        "big_model": big.display().to_string(),
        "pass": pass,
        "checks": checks.0,
        "environment": env,
        "fidelity": fidelity,
        "analyses": analyses,
        "device_specifics": specifics,
        "speed": speed,
    }))
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str(&s).ok())
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// One JSON: the kit's checks and figures, and the speed table against the Python peers.
fn summarise(work: &Path, kit_bytes: Option<u64>) -> Res<Value> {
    let mut kit = read_json(&work.join("kit.json")).ok_or("no kit.json (did `gpu_kit check` run?)")?;
    let py = work.join("py");
    let mut checks: Vec<Value> = kit["checks"].as_array().cloned().unwrap_or_default();
    let mut table = Vec::new();
    let mut goals = Vec::new();
    for dtype in ["fp32", "bf16"] {
        for sweep in ["resid", "head"] {
            let ours = &kit["speed"][dtype][sweep];
            let ours_s = num(&ours["seconds"]).unwrap_or(f64::NAN);
            let ours_values: Vec<f64> = serde_json::from_value(ours["values"].clone()).unwrap_or_default();
            let mut row = json!({ "dtype": dtype, "sweep": sweep, "ours_s": ours_s,
                "tflops_lower_bound": ours["tflops_lower_bound"], "share_of_bf16_peak": ours["share_of_bf16_peak"] });
            for peer in ["tl_way", "best"] {
                let Some(p) = read_json(&py.join(format!("{sweep}-{peer}-{dtype}.json"))) else {
                    row[peer] = json!("not run (see python_peers)");
                    continue;
                };
                let s = num(&p["seconds_extrapolated"]).or_else(|| num(&p["seconds"])).unwrap_or(f64::NAN);
                let theirs: Vec<Option<f64>> = serde_json::from_value(p["values"].clone()).unwrap_or_default();
                let pairs: Vec<(f64, f64)> = ours_values.iter().zip(&theirs).filter_map(|(a, b)| b.map(|b| (*a, b))).collect();
                let diff = max_abs(&pairs.iter().map(|p| p.0).collect::<Vec<_>>(), &pairs.iter().map(|p| p.1).collect::<Vec<_>>());
                row[format!("{peer}_s")] = json!(s);
                row[format!("vs_{peer}")] = json!(s / ours_s);
                row[format!("max_abs_diff_vs_{peer}")] = json!(diff);
                row[format!("{peer}_mode")] = p["mode"].clone();
                let same_metric = p["target"] == ours["target"] && p["baseline"] == ours["baseline"];
                if dtype == "fp32" {
                    let rel = diff / spread(&ours_values);
                    checks.push(json!({ "name": format!("{sweep} sweep fp32: ours = {peer} Python on the same card within 1e-3 of the spread"),
                        "pass": same_metric && pairs.len() == theirs.iter().flatten().count() && rel <= 1e-3,
                        "detail": { "max_abs_diff": diff, "relative_to_spread": rel, "compared": pairs.len(), "same_metric": same_metric } }));
                }
            }
            if let Some(x) = num(&row["vs_tl_way"]) {
                goals.push(json!({ "goal": format!("{sweep} {dtype} >= 10x the TransformerLens way"), "value": x, "met": x >= 10.0 }));
            }
            if let Some(x) = num(&row["vs_best"]) {
                goals.push(json!({ "goal": format!("{sweep} {dtype} ahead of the best Python"), "value": x, "met": x > 1.0 }));
            }
            if dtype == "bf16" {
                if let Some(x) = num(&row["share_of_bf16_peak"]) {
                    goals.push(json!({ "goal": format!("{sweep} bf16 matrix work >= 50% of peak"), "value": x, "met": x >= 0.5 }));
                }
            }
            table.push(row);
        }
        let a = &kit["speed"][dtype]["attribution"];
        table.push(json!({ "dtype": dtype, "sweep": "attribution resid", "ours_s": a["seconds"], "forward_equivalents": a["forward_equivalents"] }));
        let f = &kit["speed"][dtype]["forward"];
        let mut row = json!({ "dtype": dtype, "sweep": "forward", "batch": f["batch"], "ours_images_per_s": f["images_per_s"],
            "ours_tflops": f["tflops"], "share_of_bf16_peak": f["share_of_bf16_peak"] });
        if let Some(h) = read_json(&py.join(format!("forward-{dtype}.json"))) {
            row["transformers_images_per_s"] = h["images_per_s"].clone();
            if let (Some(o), Some(t)) = (num(&f["images_per_s"]), num(&h["images_per_s"])) {
                row["vs_transformers"] = json!(o / t);
            }
        }
        table.push(row);
    }
    for sweep in ["resid", "head", "attribution"] {
        if let Some(s) = kit["speed"].get_mut("fp32").and_then(|d| d.get_mut(sweep)).and_then(|v| v.as_object_mut()) {
            s.remove("values");
        }
        if let Some(s) = kit["speed"].get_mut("bf16").and_then(|d| d.get_mut(sweep)).and_then(|v| v.as_object_mut()) {
            s.remove("values");
        }
    }
    let peak = read_json(&py.join("gemm-peak.json"));
    let peers = read_json(&py.join("status.json")).unwrap_or(json!("no record"));
    let pass = checks.iter().all(|c| c["pass"] == json!(true));
    let limit: u64 = 64 * 1024 * 1024;
    Ok(json!({
        "kit": "vit-prisma GPU kit (bench/gpu/run.sh)",
        "pass": pass,
        "failed": checks.iter().filter(|c| c["pass"] != json!(true)).map(|c| c["name"].clone()).collect::<Vec<_>>(),
        "mode": kit["mode"],
        "environment": kit["environment"],
        "size": { "bytes": kit_bytes, "limit_bytes": limit, "under_limit": kit_bytes.map(|b| b < limit) },
        "speed_table": table,
        "goals": goals,
        "measured_bf16_peak": peak,
        "python_peers": peers,
        "checks": checks,
        "fidelity": kit["fidelity"],
        "analyses": kit["analyses"],
        "device_specifics": kit["device_specifics"],
        "speed": kit["speed"],
    }))
}
