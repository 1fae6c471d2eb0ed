//! Each technique against an independent computation: batched patching against a naive
//! one-patch-per-forward loop over the public run API, patching invariants, DLA per component against
//! the reference's hook_result and ln_final.hook_scale (and summing to the logit), the logit lens at
//! every layer against the model's own head run from that layer's residual, and attribution patching
//! correlating with exact patching.

mod common;
use common::*;
use prisma_core::analysis::attribution::{attribution_patching, correlation};
use prisma_core::analysis::dla::{direct_logit_attribution, DlaOptions};
use prisma_core::analysis::lens::{logit_lens, LensOptions, LensSite};
use prisma_core::analysis::metric::MetricSpec;
use prisma_core::analysis::patching::{activation_patching, PatchBy, PatchOptions, PatchWhat};
use prisma_core::interventions::{ActionKind, InterventionSpec, Selection};
use prisma_core::models::linear::onednn_available;
use prisma_core::tensor_file::read_tensor_file;
use prisma_core::RunRequest;
use std::collections::HashMap;
use tch::{IndexOp, Tensor};

fn images(name: &str) -> (Tensor, Tensor) {
    let px = reference(&format!("{name}.safetensors")).remove("pixel_values").unwrap();
    (px.i(0..1), px.i(1..2))
}

fn what_hook(what: PatchWhat) -> &'static str {
    match what {
        PatchWhat::ResidPre => "hook_resid_pre",
        PatchWhat::ResidMid => "hook_resid_mid",
        PatchWhat::ResidPost => "hook_resid_post",
        PatchWhat::AttnOut => "hook_attn_out",
        PatchWhat::MlpOut => "hook_mlp_out",
        PatchWhat::HeadZ => "attn.hook_z",
        PatchWhat::HeadQ => "attn.hook_q",
        PatchWhat::HeadK => "attn.hook_k",
        PatchWhat::HeadV => "attn.hook_v",
        PatchWhat::HeadPattern => "attn.hook_pattern",
    }
}

/// The TransformerLens way: one full forward per patch, written only with the public run API.
fn naive(model: &prisma_core::Model, clean: &Tensor, corrupt: &Tensor, what: PatchWhat, by: PatchBy, metric: MetricSpec) -> Vec<f64> {
    let cfg = &model.vit.cfg;
    let mut out = Vec::new();
    for l in 0..cfg.n_layers {
        let hook = format!("blocks.{l}.{}", what_hook(what));
        let clean_act = model
            .run(RunRequest { pixels: Some(clean.shallow_clone()), cache: vec![hook.clone()], ..Default::default() })
            .unwrap()
            .cache
            .remove(0)
            .1;
        let items: Vec<(Option<i64>, Option<i64>)> = match by {
            PatchBy::LayerPos => (0..cfg.n_pos()).map(|p| (Some(p), None)).collect(),
            PatchBy::LayerHead => (0..cfg.n_heads).map(|h| (None, Some(h))).collect(),
            PatchBy::LayerPosHead => (0..cfg.n_pos()).flat_map(|p| (0..cfg.n_heads).map(move |h| (Some(p), Some(h)))).collect(),
        };
        for (p, h) in items {
            let spec = InterventionSpec {
                hook: hook.clone(),
                select: Selection { batch: None, pos: p.map(|p| vec![p]), head: h.map(|h| vec![h]), feature: None },
                action: ActionKind::Patch,
                factor: None,
                tensor: Some("clean".into()),
                coeff: None,
            };
            let logits = model
                .run(RunRequest {
                    pixels: Some(corrupt.shallow_clone()),
                    interventions: vec![spec],
                    tensors: HashMap::from([("clean".into(), clean_act.shallow_clone())]),
                    ..Default::default()
                })
                .unwrap()
                .output;
            out.push(metric.values(&logits).unwrap()[0].value);
        }
    }
    out
}

#[test]
fn batched_patching_equals_the_naive_loop() {
    let cases = [
        (PatchWhat::ResidPre, PatchBy::LayerPos),
        (PatchWhat::ResidMid, PatchBy::LayerPos),
        (PatchWhat::ResidPost, PatchBy::LayerPos),
        (PatchWhat::AttnOut, PatchBy::LayerPos),
        (PatchWhat::MlpOut, PatchBy::LayerPos),
        (PatchWhat::HeadZ, PatchBy::LayerHead),
        (PatchWhat::HeadZ, PatchBy::LayerPosHead),
        (PatchWhat::HeadQ, PatchBy::LayerHead),
        (PatchWhat::HeadK, PatchBy::LayerPosHead),
        (PatchWhat::HeadV, PatchBy::LayerHead),
        (PatchWhat::HeadPattern, PatchBy::LayerHead),
        (PatchWhat::HeadPattern, PatchBy::LayerPosHead),
    ];
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let (clean, corrupt) = images(name);
        let metric = MetricSpec { target: 2, baseline: Some(0) };
        let last = model.vit.cfg.n_layers - 1;
        for (what, by) in cases {
            // The default runs every patch in one pass, with the clean and corrupted runs walking at
            // its head; a small chunk forces several passes after separate reference runs (chunk
            // edges); a reordered subset of layers must come back in the order asked for.
            let runs = [(None, None), (Some(7), None), (None, Some(vec![last, 0]))];
            assert_batched_equals_naive(name, &model, (&clean, &corrupt), what, by, metric, &runs, false);
        }
    }
}

/// Runs the sweep once per (chunk, layers) in `runs` and checks each against the naive loop's values
/// for those layers, in the order asked for, within 1e-4.
#[allow(clippy::too_many_arguments)]
fn assert_batched_equals_naive(
    name: &str,
    model: &prisma_core::Model,
    (clean, corrupt): (&Tensor, &Tensor),
    what: PatchWhat,
    by: PatchBy,
    metric: MetricSpec,
    runs: &[(Option<usize>, Option<Vec<usize>>)],
    fast_linear: bool,
) {
    let expected = naive(model, clean, corrupt, what, by, metric);
    let per_layer = expected.len() / model.vit.cfg.n_layers;
    for (chunk, layers) in runs {
        let opts = PatchOptions { what, by, metric, chunk: *chunk, layers: layers.clone(), fast_linear };
        let batched = activation_patching(model, clean, corrupt, &opts).unwrap();
        let wanted: Vec<f64> = match layers {
            Some(ls) => ls.iter().flat_map(|&l| expected[l * per_layer..(l + 1) * per_layer].to_vec()).collect(),
            None => expected.clone(),
        };
        assert_eq!(batched.value.len(), wanted.len());
        let worst = max_abs_diff_of(&batched.value, &wanted);
        assert!(worst <= 1e-4, "{name} {what:?} by {by:?} chunk {chunk:?} layers {layers:?}: batched differs from naive by {worst:e}");
    }
}

/// Sweeps asked for fast linear layers run them on oneDNN (GELU fused into the MLP's first
/// product), against the naive loop, which runs at::linear throughout. Covers
/// erf GELU (vit-tiny-cls), tanh GELU (vit-odd), quick GELU (clip-tiny, not fused) and a gated
/// MLP (dinov2-swiglu-tiny); the self-patching invariant holds within the oneDNN sweep too.
#[test]
fn sweeps_on_onednn_linears_equal_the_naive_loop() {
    // The project's libtorch (x86-64 PyTorch wheels) has oneDNN: a build without it must not pass
    // this test by skipping it.
    if !onednn_available() {
        if cfg!(target_arch = "x86_64") {
            panic!("this x86-64 libtorch has no oneDNN: the fast-linear sweeps are untested");
        }
        eprintln!("this libtorch has no oneDNN; nothing to check");
        return;
    }
    let cases = [
        (PatchWhat::ResidPre, PatchBy::LayerPos),
        (PatchWhat::MlpOut, PatchBy::LayerPos),
        (PatchWhat::HeadZ, PatchBy::LayerHead),
        (PatchWhat::HeadPattern, PatchBy::LayerHead),
    ];
    for name in ["vit-tiny-cls", "vit-odd", "clip-tiny", "dinov2-swiglu-tiny"] {
        let model = load_with_head(name);
        let (clean, corrupt) = images(name);
        let metric = MetricSpec { target: 1, baseline: Some(0) };
        for (what, by) in cases {
            assert_batched_equals_naive(name, &model, (&clean, &corrupt), what, by, metric, &[(None, None), (Some(7), None)], true);
        }
        let itself = activation_patching(
            &model,
            &clean,
            &clean,
            &PatchOptions { what: PatchWhat::ResidPre, by: PatchBy::LayerPos, metric, chunk: None, layers: None, fast_linear: true },
        )
        .unwrap();
        assert!(itself.value.iter().all(|v| (v - itself.clean.value).abs() <= 1e-5), "{name}: clean into clean moved the metric");
    }
}

/// Only f32 CPU models have fast linears: asking on a half-precision model is an argument error,
/// whether or not this libtorch has oneDNN.
#[test]
fn fast_linears_on_a_half_precision_model_are_an_argument_error() {
    let half = prisma_core::Model::load(&fixtures().join("models").join("vit-tiny-cls"), "cpu", "f16").unwrap();
    let (clean, corrupt) = images("vit-tiny-cls");
    let opts = PatchOptions {
        what: PatchWhat::HeadZ,
        by: PatchBy::LayerHead,
        metric: MetricSpec { target: 1, baseline: None },
        chunk: None,
        layers: None,
        fast_linear: true,
    };
    let err = activation_patching(&half, &clean, &corrupt, &opts).unwrap_err();
    assert_eq!(err.code(), "E_ARGUMENT", "{err}");
}

/// Models whose head reads every token (mean pooling: timm avg-pool, VideoMAE without a class
/// token) keep all rows in the last block, and rows entering after it (resid_post) join full-width.
#[test]
fn batched_patching_equals_the_naive_loop_when_the_head_reads_every_token() {
    for name in ["timm-vit-gap", "videomae-tiny"] {
        let model = load(name);
        let (clean, corrupt) = if name == "videomae-tiny" {
            // One reference clip; the corrupted clip plays its frames backwards.
            let clip = reference(&format!("{name}.safetensors")).remove("pixel_values").unwrap();
            (clip.shallow_clone(), clip.flip([1i64].as_slice()))
        } else {
            images(name)
        };
        let metric = MetricSpec { target: 1, baseline: Some(0) };
        let runs = [(None, None), (None, Some(vec![model.vit.cfg.n_layers - 1, 0]))];
        for (what, by) in [
            (PatchWhat::ResidPre, PatchBy::LayerPos),
            (PatchWhat::ResidPost, PatchBy::LayerPos),
            (PatchWhat::HeadZ, PatchBy::LayerHead),
            (PatchWhat::HeadPattern, PatchBy::LayerHead),
        ] {
            assert_batched_equals_naive(name, &model, (&clean, &corrupt), what, by, metric, &runs, false);
        }
    }
}

#[test]
fn patching_a_run_into_itself_gives_its_own_metric() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let (clean, corrupt) = images(name);
        let metric = MetricSpec { target: 1, baseline: None };
        for what in [PatchWhat::ResidPre, PatchWhat::AttnOut, PatchWhat::HeadZ, PatchWhat::HeadPattern] {
            let by = if what == PatchWhat::HeadZ || what == PatchWhat::HeadPattern { PatchBy::LayerHead } else { PatchBy::LayerPos };
            for img in [&clean, &corrupt] {
                let r = activation_patching(
                    &model,
                    img,
                    img,
                    &PatchOptions { what, by, metric, chunk: None, layers: None, fast_linear: false },
                )
                .unwrap();
                let own = r.clean.value;
                // Equal up to float rounding: batch size and fused vs explicit attention kernels
                // change the summation order, never the value beyond ~1e-6.
                assert!((r.clean.value - r.corrupt.value).abs() <= 1e-5);
                for v in &r.value {
                    assert!((v - own).abs() <= 1e-5, "{name} {what:?}: {v} vs {own}");
                }
            }
        }
    }
}

/// For a small difference between the runs the first-order estimate must be nearly exact: this
/// checks the gradients themselves, independently of how linear the model is.
#[test]
fn attribution_patching_is_exact_to_first_order() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let (_, corrupt) = images(name);
        // A small, fixed perturbation (sin of the element index): no random draw, so every run
        // checks the same pair.
        let wiggle = Tensor::arange(corrupt.numel() as i64, (tch::Kind::Float, tch::Device::Cpu)).f_mul_scalar(0.7).unwrap().sin();
        let clean = &corrupt + wiggle.reshape(corrupt.size()) * 1e-3;
        for (what, by) in [
            (PatchWhat::ResidPre, PatchBy::LayerPos),
            (PatchWhat::HeadZ, PatchBy::LayerHead),
            (PatchWhat::HeadPattern, PatchBy::LayerPosHead),
            (PatchWhat::MlpOut, PatchBy::LayerPos),
            (PatchWhat::HeadK, PatchBy::LayerPosHead),
        ] {
            let opts = PatchOptions {
                what,
                by,
                metric: MetricSpec { target: 2, baseline: Some(0) },
                chunk: None,
                layers: None,
                fast_linear: false,
            };
            let exact = activation_patching(&model, &clean, &corrupt, &opts).unwrap();
            let approx = attribution_patching(&model, &clean, &corrupt, &opts).unwrap();
            let base = exact.corrupt.value;
            let d_exact: Vec<f64> = exact.value.iter().map(|v| v - base).collect();
            let d_approx: Vec<f64> = approx.value.iter().map(|v| v - base).collect();
            let scale = worst(d_exact.iter().map(|d| d.abs()));
            let error = max_abs_diff_of(&d_exact, &d_approx);
            eprintln!("first-order check {name} {what:?} {by:?}: max |delta| {scale:.2e}, max error {error:.2e}");
            assert!(scale.is_finite() && error <= 0.05 * scale + 1e-6, "{name} {what:?}: error {error:e} vs scale {scale:e}");
        }
    }
}

#[test]
fn attribution_patching_tracks_exact_patching() {
    for (name, what, by) in [
        ("vit-tiny-cls", PatchWhat::ResidPre, PatchBy::LayerPos),
        ("vit-tiny-cls", PatchWhat::HeadZ, PatchBy::LayerHead),
        ("vit-odd", PatchWhat::ResidPre, PatchBy::LayerPos),
        ("vit-odd", PatchWhat::HeadZ, PatchBy::LayerHead),
    ] {
        let model = load(name);
        let (clean, corrupt) = images(name);
        let opts =
            PatchOptions { what, by, metric: MetricSpec { target: 2, baseline: Some(0) }, chunk: None, layers: None, fast_linear: false };
        let exact = activation_patching(&model, &clean, &corrupt, &opts).unwrap();
        let approx = attribution_patching(&model, &clean, &corrupt, &opts).unwrap();
        assert_eq!(exact.dims, approx.dims);
        // Exact patching runs clean and corrupted as one batch, attribution one at a time.
        assert!((exact.clean.value - approx.clean.value).abs() < 1e-5);
        assert!((exact.corrupt.value - approx.corrupt.value).abs() < 1e-5);
        let r = correlation(&exact.value, &approx.value);
        eprintln!("attribution vs exact, {name} {what:?} by {by:?}: r = {r:.3}");
        // Real image pairs on random-weight models are far from linear; the estimate must still
        // point the right way overall.
        assert!(r > 0.0, "{name} {what:?}: correlation {r}");
    }
}

/// Sweeps run in libtorch's inference mode; leaving it, by success or by error, must give the thread
/// its autograd back (attribution patching needs gradients).
#[test]
fn a_sweep_leaves_autograd_working_after_success_and_error() {
    let model = load("vit-tiny-cls");
    let (clean, corrupt) = images("vit-tiny-cls");
    let metric = MetricSpec { target: 2, baseline: Some(0) };
    let bad =
        PatchOptions { what: PatchWhat::HeadZ, by: PatchBy::LayerHead, metric, chunk: None, layers: Some(vec![99]), fast_linear: false };
    assert!(activation_patching(&model, &clean, &corrupt, &bad).is_err());
    let good = PatchOptions { layers: None, ..bad };
    activation_patching(&model, &clean, &corrupt, &good).unwrap();
    let x = Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let y = (&x * &x).sum(tch::Kind::Float);
    y.backward();
    assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![2.0, 2.0]);
    let approx = attribution_patching(&model, &clean, &corrupt, &good).unwrap();
    assert_eq!(approx.value.len(), 2 * 4);
}

/// DLA component by component, computed here from the reference files alone (no prisma forward):
/// each head's HF-derived `hook_result`, each `hook_mlp_out`, the embeddings and each attention bias at
/// the class token, centred, divided by the reference's `ln_final.hook_scale` there, times the final
/// norm's weight, on classifier[target] - classifier[baseline] read from the checkpoint.
#[test]
fn dla_components_equal_the_reference_activations_through_the_frozen_final_norm() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let reference = reference(&format!("{name}.safetensors"));
        let weights: HashMap<String, Tensor> =
            read_tensor_file(&fixtures().join("models").join(name).join("model.safetensors")).unwrap().into_iter().collect();
        let dbl = |t: &Tensor| t.to_kind(tch::Kind::Double);
        let (target, baseline) = (3i64, 1i64);
        let classifier = dbl(&weights["classifier.weight"]);
        let direction = classifier.get(target) - classifier.get(baseline);
        let ln_w = dbl(&weights["vit.layernorm.weight"]);
        for b in 0..3i64 {
            let scale = reference["ln_final.hook_scale"].get(b).get(0).double_value(&[0]);
            let project = |x: Tensor| -> f64 {
                let x = dbl(&x);
                let centred = &x - x.mean(tch::Kind::Double);
                (centred / scale * &ln_w).dot(&direction).double_value(&[])
            };
            let at_cls = |key: &str| reference[key].get(b).get(0);
            let mut expected: Vec<(String, f64)> = vec![
                ("embed".into(), project(at_cls("hook_full_embed") - at_cls("hook_pos_embed"))),
                ("pos_embed".into(), project(at_cls("hook_pos_embed"))),
            ];
            for l in 0..model.vit.cfg.n_layers {
                let result = at_cls(&format!("blocks.{l}.attn.hook_result")); // [H, d]
                for h in 0..model.vit.cfg.n_heads {
                    expected.push((format!("L{l}H{h}"), project(result.get(h))));
                }
                expected.push((
                    format!("L{l}.attn_bias"),
                    project(weights[&format!("vit.encoder.layer.{l}.attention.output.dense.bias")].copy()),
                ));
                expected.push((format!("L{l}.mlp"), project(at_cls(&format!("blocks.{l}.hook_mlp_out")))));
            }
            let pixels = reference["pixel_values"].i(b..b + 1);
            let r = direct_logit_attribution(
                &model,
                &pixels,
                &DlaOptions { metric: MetricSpec { target, baseline: Some(baseline) }, per_position: false },
            )
            .unwrap();
            let got: Vec<(String, f64)> = r.components.iter().map(|c| (c.name.clone(), c.value)).collect();
            assert_eq!(got.len(), expected.len(), "{name} image {b}: components {got:?}");
            for ((gn, gv), (en, ev)) in got.iter().zip(&expected) {
                assert_eq!(gn, en, "{name} image {b}: component order");
                assert!((gv - ev).abs() <= 1e-4, "{name} image {b}: {gn} is {gv}, the reference gives {ev}");
            }
            // the heads matrix is the head components in layer-major order
            let heads: Vec<f64> = expected.iter().filter(|(n, _)| n.contains('H')).map(|(_, v)| *v).collect();
            assert!(max_abs_diff_of(&r.heads, &heads) <= 1e-4, "{name} image {b}: heads matrix");
        }
    }
}

#[test]
fn dla_components_sum_to_the_logit() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let (img, _) = images(name);
        for baseline in [None, Some(1)] {
            let r = direct_logit_attribution(&model, &img, &DlaOptions { metric: MetricSpec { target: 3, baseline }, per_position: true })
                .unwrap();
            let total = r.sum_of_components + r.constant;
            assert!((total - r.logit).abs() <= 1e-4, "{name}: {total} vs {}", r.logit);
            // Per-position splits of each head add up to the head.
            let n_pos = model.vit.cfg.n_pos() as usize;
            let hp = r.head_positions.as_ref().unwrap();
            for (i, head) in r.heads.iter().enumerate() {
                let s: f64 = hp[i * n_pos..(i + 1) * n_pos].iter().sum();
                assert!((s - head).abs() <= 1e-6);
            }
        }
    }
}

/// At every layer and site, the lens reading equals the model's own head run from that residual:
/// `start_at_layer = n_layers` with `start_resid` = the reference's (HF) resid_pre / resid_post there.
#[test]
fn logit_lens_at_every_layer_is_the_head_run_from_that_layer() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let reference = reference(&format!("{name}.safetensors"));
        let n_layers = model.vit.cfg.n_layers;
        let opts = LensOptions { target: Some(2), sites: vec![LensSite::ResidPre, LensSite::ResidPost], top_k: 3 };
        let images = logit_lens(&model, &reference["pixel_values"], &[], &opts).unwrap();
        assert_eq!(images.len(), 3);
        let mut checked = 0;
        for (b, image) in images.iter().enumerate() {
            assert_eq!(image.layers.len(), 2 * n_layers, "{name}: one reading per layer and site");
            for reading in &image.layers {
                let site = if reading.site == LensSite::ResidPre { "hook_resid_pre" } else { "hook_resid_post" };
                let resid = reference[&format!("blocks.{}.{site}", reading.layer)].i(b as i64..b as i64 + 1);
                let head = model
                    .run(RunRequest { start_at_layer: Some(n_layers), start_resid: Some(resid), ..Default::default() })
                    .unwrap()
                    .output
                    .get(0);
                let expected = head.double_value(&[2]);
                assert!(
                    (reading.target_logit - expected).abs() <= 1e-4,
                    "{name} image {b} {site} layer {}: lens {} vs head {expected}",
                    reading.layer,
                    reading.target_logit
                );
                let top = head.argmax(0, false).int64_value(&[]);
                assert_eq!(reading.top_k[0].index, top, "{name} image {b} {site} layer {}: top-1", reading.layer);
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * 2 * n_layers);
    }
}

#[test]
fn logit_lens_at_the_last_layer_is_the_model_output() {
    for name in ["vit-tiny-cls", "vit-odd"] {
        let model = load(name);
        let reference = reference(&format!("{name}.safetensors"));
        let px = &reference["pixel_values"];
        let opts = LensOptions { target: None, sites: vec![LensSite::ResidPre, LensSite::ResidPost], top_k: 3 };
        let images = logit_lens(&model, px, &[], &opts).unwrap();
        let logits = &reference["hook_logits"];
        for (b, image) in images.iter().enumerate() {
            let last = image.layers.iter().rev().find(|l| l.site == LensSite::ResidPost).unwrap();
            let expected = logits.i((b as i64, image.target)).double_value(&[]);
            assert!((last.target_logit - expected).abs() <= 1e-4);
            assert_eq!(last.top_k[0].index, image.logits_top_k[0].index);
            assert_eq!(image.layers.len(), 2 * model.vit.cfg.n_layers);
        }
    }
}

#[test]
fn zero_ablation_sweep_equals_one_run_per_head() {
    use prisma_core::analysis::ablation::{ablation_sweep, AblationMode, AblationOptions};
    let model = load("vit-odd");
    let (img, other) = images("vit-odd");
    let metric = MetricSpec { target: 4, baseline: None };
    let opts = AblationOptions {
        mode: AblationMode::Zero,
        what: PatchWhat::HeadZ,
        by: PatchBy::LayerHead,
        metric,
        resample_index: 0,
        chunk: Some(2),
        fast_linear: false,
    };
    let swept = ablation_sweep(&model, &img, None, &opts).unwrap();
    let cfg = &model.vit.cfg;
    let mut i = 0;
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            let spec = InterventionSpec {
                hook: format!("blocks.{l}.attn.hook_z"),
                select: Selection { head: Some(vec![h]), ..Default::default() },
                action: ActionKind::Zero,
                factor: None,
                tensor: None,
                coeff: None,
            };
            let logits = model
                .run(RunRequest { pixels: Some(img.shallow_clone()), interventions: vec![spec], ..Default::default() })
                .unwrap()
                .output;
            let v = metric.values(&logits).unwrap()[0].value;
            assert!((v - swept.value[i]).abs() <= 1e-4);
            i += 1;
        }
    }
    // Resampling from the image itself changes nothing.
    let same = AblationOptions { mode: AblationMode::Resample, ..opts.clone() };
    let r = ablation_sweep(&model, &img, Some(&img), &same).unwrap();
    assert!(r.value.iter().all(|v| (v - r.clean.value).abs() <= 1e-5));
    let mean = AblationOptions { mode: AblationMode::Mean, ..opts.clone() };
    let refs = Tensor::cat(&[&img, &other], 0);
    let pair = ablation_sweep(&model, &img, Some(&refs), &mean).unwrap();
    assert_eq!(pair.value.len(), i);
    // The mean over 20 references, run 16 at a time, is the mean over the two images they repeat.
    let twenty = Tensor::cat(&(0..10).flat_map(|_| [&img, &other]).collect::<Vec<_>>(), 0);
    let many = ablation_sweep(&model, &img, Some(&twenty), &mean).unwrap();
    let worst = max_abs_diff_of(&many.value, &pair.value);
    assert!(worst <= 1e-5, "mean over 20 references differs from the mean over their 2 images by {worst:e}");
    // The mean over copies of one image is that image: resampling it.
    let copies = Tensor::cat(&[&other, &other, &other], 0);
    let resampled = ablation_sweep(&model, &img, Some(&other), &AblationOptions { mode: AblationMode::Resample, ..opts.clone() }).unwrap();
    let averaged = ablation_sweep(&model, &img, Some(&copies), &mean).unwrap();
    let worst = max_abs_diff_of(&averaged.value, &resampled.value);
    assert!(worst <= 1e-5, "mean over copies of an image differs from resampling it by {worst:e}");
    // Resampling runs only the chosen reference: index 1 of [img, other] is `other`.
    let second =
        ablation_sweep(&model, &img, Some(&refs), &AblationOptions { mode: AblationMode::Resample, resample_index: 1, ..opts }).unwrap();
    assert_eq!(second.value, resampled.value);
}

/// Resampling from another image is patching that image's activations in, through the ablation
/// path (values from a separate cache, full width even where the sweep's last block runs for the
/// class token alone): it must equal the naive one-patch-per-forward loop, in one pass and in many.
#[test]
fn resample_ablation_equals_the_naive_patching_loop() {
    use prisma_core::analysis::ablation::{ablation_sweep, AblationMode, AblationOptions};
    let model = load("vit-tiny-cls");
    let (img, other) = images("vit-tiny-cls");
    let metric = MetricSpec { target: 2, baseline: Some(0) };
    for (what, by) in
        [(PatchWhat::ResidMid, PatchBy::LayerPos), (PatchWhat::MlpOut, PatchBy::LayerPos), (PatchWhat::HeadZ, PatchBy::LayerPosHead)]
    {
        let expected = naive(&model, &other, &img, what, by, metric);
        for chunk in [None, Some(7)] {
            let opts = AblationOptions { mode: AblationMode::Resample, what, by, metric, resample_index: 0, chunk, fast_linear: false };
            let swept = ablation_sweep(&model, &img, Some(&other), &opts).unwrap();
            assert_eq!(swept.value.len(), expected.len());
            let worst = max_abs_diff_of(&swept.value, &expected);
            assert!(worst <= 1e-4, "{what:?} by {by:?} chunk {chunk:?}: resampled sweep differs from naive patching by {worst:e}");
        }
    }
}

/// A fixture model with a classifier to patch against: CLIP-style models classify three prompts, and
/// headless backbones (DINOv2) get a random linear probe.
fn load_with_head(name: &str) -> prisma_core::Model {
    use tch::{Device, Kind};
    let mut model = load(name);
    if model.text.is_some() {
        let labels: Vec<String> = ["a cat", "a dog", "a person"].iter().map(|l| l.to_string()).collect();
        model.set_class_prompts(labels.clone(), labels.iter().map(|l| format!("a photo of {l}.")).collect()).unwrap();
    } else if name.starts_with("dinov2") {
        let probe = std::env::temp_dir().join(format!("prisma-probe-{name}-{}.safetensors", std::process::id()));
        tch::manual_seed(0);
        let d = model.vit.cfg.d_model;
        let (weight, bias) = (Tensor::randn([3, d], (Kind::Float, Device::Cpu)), Tensor::randn([3], (Kind::Float, Device::Cpu)));
        Tensor::write_safetensors(&[("weight", &weight), ("bias", &bias)], &probe).unwrap();
        model.set_linear_probe(&probe, None).unwrap();
        let _ = std::fs::remove_file(&probe);
    }
    model
}

/// The same check on the other families' shapes: a CLIP vision tower (a norm before the blocks, the
/// final norm on the pooled token, image-text logits) and DINOv2 with register tokens, read
/// through a linear probe. One pass (reference rows walking with the patches) and several.
#[test]
fn batched_patching_equals_the_naive_loop_on_clip_and_dinov2() {
    let (clip, dino) = (load_with_head("clip-tiny"), load_with_head("dinov2-reg-tiny"));
    let metric = MetricSpec { target: 1, baseline: Some(0) };
    let cases = [
        (PatchWhat::ResidPre, PatchBy::LayerPos),
        (PatchWhat::AttnOut, PatchBy::LayerPos),
        (PatchWhat::ResidPost, PatchBy::LayerPos),
        (PatchWhat::HeadZ, PatchBy::LayerHead),
        (PatchWhat::HeadV, PatchBy::LayerPosHead),
    ];
    for (name, model) in [("clip-tiny", &clip), ("dinov2-reg-tiny", &dino)] {
        let (clean, corrupt) = images(name);
        for (what, by) in cases {
            assert_batched_equals_naive(name, model, (&clean, &corrupt), what, by, metric, &[(None, None), (Some(7), None)], false);
        }
    }
}
