//! Every hook point against Hugging Face transformers' own activations (fixtures/reference,
//! produced by fixtures/make_fixtures.py), within 1e-4 in fp32, plus the structural round trips.

mod common;
use common::*;
use prisma_core::hooks::HookPoint;
use prisma_core::interventions::{ActionKind, InterventionSpec, Selection};
use prisma_core::models::vit::SMALL_PATCH_PRODUCT;
use prisma_core::RunRequest;
use std::collections::HashMap;
use tch::{IndexOp, Tensor};

const TOL: f64 = 1e-4;

fn run_all(model: &prisma_core::Model, pixels: &Tensor) -> prisma_core::RunOutput {
    model.run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["*".into()], ..Default::default() }).expect("forward runs")
}

#[test]
fn every_hook_matches_the_reference() {
    for name in MODELS {
        let model = load(name);
        let reference = reference(&format!("{name}.safetensors"));
        let out = run_all(&model, &reference["pixel_values"]);
        let mut ours: HashMap<String, &Tensor> = out.cache.iter().map(|(p, t)| (p.to_string(), t)).collect();
        ours.insert(out.output_name.to_string(), &out.output);
        let mut compared = 0;
        // Other resolutions (res*.*, pixel_values_*) are families.rs's every_reference_resolution_matches.
        let at_this_size = |key: &str| !key.starts_with("pixel_values") && !key.starts_with("res");
        for (key, expected) in &reference {
            if !at_this_size(key) {
                continue;
            }
            let got = ours.get(key).unwrap_or_else(|| panic!("{name}: we expose no '{key}'"));
            let diff = max_abs_diff(got, expected);
            assert!(diff <= TOL, "{name}: {key} differs by {diff:e}");
            compared += 1;
        }
        // Every reference key was compared; and every hook we expose has a reference.
        assert_eq!(compared, reference.keys().filter(|k| at_this_size(k)).count());
        let exposed = model.hook_points().len();
        assert_eq!(compared, exposed, "{name}: {exposed} hooks exposed but {compared} references");
        assert_ln_eps(name, &model, &reference_metadata(&format!("{name}.safetensors")));
        eprintln!("{name}: {compared} hook points within {TOL:e}");
    }
}

/// The comparison helpers themselves: a NaN activation must never pass a tolerance (a fold with
/// `f64::max` skips NaN, so an all-NaN tensor used to score 0).
#[test]
fn comparisons_fail_on_nan() {
    let expected = &reference("vit-tiny-cls.safetensors")["blocks.0.hook_resid_post"];
    assert_eq!(max_abs_diff(expected, expected), 0.0);
    // +inf, so `diff <= TOL` fails.
    let all_nan = expected.full_like(f64::NAN);
    assert_eq!(max_abs_diff(&all_nan, expected), f64::INFINITY, "an all-NaN tensor");
    assert_eq!(max_abs_diff(expected, &all_nan), f64::INFINITY, "an all-NaN reference");
    let one_nan = expected.copy();
    let _ = one_nan.view([-1]).get(7).fill_(f64::NAN);
    assert_eq!(max_abs_diff(&one_nan, expected), f64::INFINITY, "a tensor with one NaN");
    assert_eq!(max_abs_diff_of(&[1.0, f64::NAN], &[1.0, 2.0]), f64::INFINITY);
    assert_eq!(worst([0.0, f64::NAN, 0.0]), f64::INFINITY);
}

/// Small CPU batches embed their patches with one matrix product instead of the convolution
/// (models/vit.rs, `small_patch_product`); large ones run the convolution. Both must agree: one image
/// alone against the same image inside a batch big enough to take the convolution.
#[test]
fn patch_product_of_small_batches_equals_the_convolution() {
    for name in MODELS {
        let model = load(name);
        if model.vit.cfg.num_frames > 0 {
            continue; // video models always run their 3-d convolution
        }
        let pixels = reference(&format!("{name}.safetensors"))["pixel_values"].i(0..1);
        let cfg = &model.vit.cfg;
        let per_image = cfg.image_size[0] * cfg.image_size[1] * cfg.num_channels * cfg.d_model;
        // Past the product's threshold for every fixture.
        let big = (SMALL_PATCH_PRODUCT / per_image + 1).max(2);
        let embed = |pixels: &Tensor| {
            let out = model
                .run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["hook_embed".into()], ..Default::default() })
                .expect("forward runs");
            out.cache.into_iter().find(|(p, _)| *p == HookPoint::global(prisma_core::hooks::Site::Embed)).expect("hook_embed cached").1
        };
        let alone = embed(&pixels);
        let in_batch = embed(&pixels.repeat([big, 1, 1, 1].as_slice()));
        assert_eq!(alone.size()[1..], in_batch.size()[1..], "{name}: embedding shapes");
        // Equal to float rounding: the two kernels sum C*p*p products in different orders.
        let diff = max_abs_diff(&alone, &in_batch.i(0..1));
        let scale = alone.abs().max().double_value(&[]);
        assert!(diff <= 1e-6 * scale.max(1.0), "{name}: product and convolution differ by {diff:e} (values up to {scale})");
        eprintln!("{name}: product and convolution within {diff:e} (values up to {scale:.1})");
    }
}

#[test]
fn batch_of_three_equals_three_single_runs() {
    for name in MODELS {
        let model = load(name);
        let pixels = &reference(&format!("{name}.safetensors"))["pixel_values"];
        let batch = run_all(&model, pixels);
        for i in 0..3 {
            let single = run_all(&model, &pixels.i(i..i + 1));
            for ((p, b), (_, s)) in batch.cache.iter().zip(&single.cache) {
                let diff = max_abs_diff(&b.i(i..i + 1), s);
                assert!(diff <= 1e-5, "{name} image {i}: {p} differs by {diff:e}");
            }
        }
    }
}

#[test]
fn stop_and_start_at_every_layer_round_trip() {
    for name in MODELS {
        let model = load(name);
        let reference = reference(&format!("{name}.safetensors"));
        let pixels = &reference["pixel_values"];
        let full = model.run(RunRequest { pixels: Some(pixels.shallow_clone()), ..Default::default() }).unwrap();
        let n_layers = model.vit.cfg.n_layers;
        for layer in 0..=n_layers {
            let stopped =
                model.run(RunRequest { pixels: Some(pixels.shallow_clone()), stop_at_layer: Some(layer), ..Default::default() }).unwrap();
            let expected = &reference[&stopped.output_name.to_string()];
            assert!(max_abs_diff(&stopped.output, expected) <= TOL, "{name}: stop at {layer}");
            let resumed =
                model.run(RunRequest { start_at_layer: Some(layer), start_resid: Some(stopped.output), ..Default::default() }).unwrap();
            assert_eq!(resumed.output_name, full.output_name);
            let diff = max_abs_diff(&resumed.output, &full.output);
            assert!(diff <= 1e-5, "{name}: start at {layer} differs by {diff:e}");
        }
    }
}

fn patch_spec(hook: &str, tensor: &str) -> InterventionSpec {
    InterventionSpec {
        hook: hook.into(),
        select: Selection::default(),
        action: ActionKind::Patch,
        factor: None,
        tensor: Some(tensor.into()),
        coeff: None,
    }
}

#[test]
fn writing_back_the_cached_value_changes_nothing() {
    for name in MODELS {
        let model = load(name);
        let pixels = &reference(&format!("{name}.safetensors"))["pixel_values"];
        let clean = run_all(&model, pixels);
        for (point, value) in &clean.cache {
            let hook = point.to_string();
            let out = model
                .run(RunRequest {
                    pixels: Some(pixels.shallow_clone()),
                    interventions: vec![patch_spec(&hook, "v")],
                    tensors: HashMap::from([("v".to_string(), value.shallow_clone())]),
                    ..Default::default()
                })
                .unwrap();
            let diff = max_abs_diff(&out.output, &clean.output);
            // Editing a hook may switch from a fused kernel to the explicit one; only rounding may differ.
            assert!(diff <= 1e-5, "{name}: writing back {hook} moved the output by {diff:e}");
        }
    }
}

#[test]
fn zero_ablating_one_head_changes_only_what_lies_downstream() {
    let model = load("vit-tiny-cls");
    let pixels = &reference("vit-tiny-cls.safetensors")["pixel_values"];
    let clean = run_all(&model, pixels);
    let spec = InterventionSpec {
        hook: "blocks.1.attn.hook_z".into(),
        select: Selection { head: Some(vec![2]), ..Default::default() },
        action: ActionKind::Zero,
        factor: None,
        tensor: None,
        coeff: None,
    };
    let ablated = model
        .run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["*".into()], interventions: vec![spec], ..Default::default() })
        .unwrap();
    let z = HookPoint::parse("blocks.1.attn.hook_z").unwrap();
    let mut downstream = false;
    for ((point, a), (_, c)) in ablated.cache.iter().zip(&clean.cache) {
        let diff = max_abs_diff(a, c);
        if *point == z {
            // Only head 2 of z changed, and it is exactly zero.
            for h in 0..4 {
                let d = max_abs_diff(&a.i((.., .., h)), &c.i((.., .., h)));
                if h == 2 {
                    assert_eq!(a.i((.., .., 2)).abs().max().double_value(&[]), 0.0);
                } else {
                    assert_eq!(d, 0.0, "head {h} of z changed");
                }
            }
            downstream = true;
            continue;
        }
        if downstream {
            assert!(diff.is_finite() && diff > 0.0, "{point} lies downstream of the ablation but did not change");
        } else {
            assert_eq!(diff, 0.0, "{point} lies upstream of the ablation but changed by {diff:e}");
        }
    }
    let moved = max_abs_diff(&ablated.output, &clean.output);
    assert!(moved.is_finite() && moved > 0.0, "the output moved by {moved}");
}

/// Interventions computed by PyTorch forward hooks on the HF model itself.
#[test]
fn interventions_match_pytorch_hooks_on_the_reference_model() {
    let model = load("vit-tiny-cls");
    let reference = reference("interventions.safetensors");
    let pixels = &common::reference("vit-tiny-cls.safetensors")["pixel_values"];
    let run = |specs: Vec<InterventionSpec>, tensors: HashMap<String, Tensor>| {
        model
            .run(RunRequest {
                pixels: Some(pixels.shallow_clone()),
                cache: vec!["blocks.1.hook_resid_pre".into()],
                interventions: specs,
                tensors,
                ..Default::default()
            })
            .unwrap()
    };
    let zero = run(
        vec![InterventionSpec {
            hook: "blocks.0.attn.hook_z".into(),
            select: Selection { head: Some(vec![1]), ..Default::default() },
            action: ActionKind::Zero,
            factor: None,
            tensor: None,
            coeff: None,
        }],
        HashMap::new(),
    );
    assert!(max_abs_diff(&zero.output, &reference["zero_head.logits"]) <= TOL);
    assert!(max_abs_diff(&zero.cache[0].1, &reference["zero_head.blocks.1.hook_resid_pre"]) <= TOL);

    let patched = run(
        vec![InterventionSpec {
            hook: "blocks.1.hook_resid_pre".into(),
            select: Selection { pos: Some(vec![3]), ..Default::default() },
            action: ActionKind::Set,
            factor: None,
            tensor: Some("src".into()),
            coeff: None,
        }],
        HashMap::from([("src".to_string(), reference["patch_resid.source"].shallow_clone())]),
    );
    assert!(max_abs_diff(&patched.output, &reference["patch_resid.logits"]) <= TOL);

    let scaled = run(
        vec![InterventionSpec {
            hook: "blocks.0.hook_mlp_out".into(),
            select: Selection::default(),
            action: ActionKind::Scale,
            factor: Some(0.5),
            tensor: None,
            coeff: None,
        }],
        HashMap::new(),
    );
    assert!(max_abs_diff(&scaled.output, &reference["scale_mlp.logits"]) <= TOL);

    // add, with a coefficient, at two positions of batch entries 0 and 2 only
    let added = run(
        vec![InterventionSpec {
            hook: "blocks.0.hook_attn_out".into(),
            select: Selection { batch: Some(vec![0, 2]), pos: Some(vec![2, 5]), ..Default::default() },
            action: ActionKind::Add,
            factor: None,
            tensor: Some("dir".into()),
            coeff: Some(0.7),
        }],
        HashMap::from([("dir".to_string(), reference["add_dir.direction"].shallow_clone())]),
    );
    let diff = max_abs_diff(&added.output, &reference["add_dir.logits"]);
    assert!(diff <= TOL, "add: logits differ from the PyTorch hook's by {diff:e}");

    // mean over runs, for one head of batch entry 1 only
    let meaned = run(
        vec![InterventionSpec {
            hook: "blocks.1.attn.hook_z".into(),
            select: Selection { batch: Some(vec![1]), head: Some(vec![0]), ..Default::default() },
            action: ActionKind::Mean,
            factor: None,
            tensor: Some("runs".into()),
            coeff: None,
        }],
        HashMap::from([("runs".to_string(), reference["mean_head.runs"].shallow_clone())]),
    );
    let diff = max_abs_diff(&meaned.output, &reference["mean_head.logits"]);
    assert!(diff <= TOL, "mean: logits differ from the PyTorch hook's by {diff:e}");
}
