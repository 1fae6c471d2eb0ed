//! Every model family against its reference library's own activations (fixtures/reference, made by
//! fixtures/make_family_fixtures.py with transformers / open_clip / timm), within 1e-4 in fp32:
//! every hook the model exposes has a reference and is compared (compared == exposed), at the default
//! and at other resolutions, for images and for a video clip, and CLIP's text tower, tokenizer and
//! zero-shot probabilities; each model uses its reference's layer-norm eps.

mod common;
use common::*;
use prisma_core::weights::family::LoadOptions;
use prisma_core::{Model, RunRequest};
use std::collections::{BTreeMap, HashMap};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const PROMPTS: [&str; 4] = ["a photo of a cat.", "a photo of a dog.", "a photo of coffee.", "a photo of a person."];

fn load_at(name: &str, size: Option<[i64; 2]>) -> Model {
    Model::load_with(&fixtures().join("models").join(name), "cpu", "f32", &LoadOptions { image_size: size, ..Default::default() })
        .expect("fixture model loads")
}

/// Runs `pixels` recording every hook; returns name → value (the output included).
fn run_all(model: &Model, pixels: &Tensor) -> HashMap<String, Tensor> {
    let out = model
        .run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["*".into()], ..Default::default() })
        .expect("forward runs");
    let mut ours: HashMap<String, Tensor> = out.cache.into_iter().map(|(p, t)| (p.to_string(), t)).collect();
    ours.insert(out.output_name.to_string(), out.output);
    ours
}

/// Compares every reference key under `prefix` (stripped) that is a hook; returns how many.
/// Keys in `not_exposed` may be absent from our hooks; any other absent key fails.
fn compare(name: &str, reference: &BTreeMap<String, Tensor>, ours: &HashMap<String, Tensor>, prefix: &str, not_exposed: &[&str]) -> usize {
    let mut compared = 0;
    let mut worst = 0f64;
    for (key, expected) in reference {
        let Some(hook) = key.strip_prefix(prefix) else { continue };
        if (prefix.is_empty() && hook.starts_with("res"))
            || hook.starts_with("pixel_values")
            || ["input_ids", "attention_mask", "zero_shot_probs"].contains(&hook)
        {
            continue;
        }
        match ours.get(hook) {
            Some(got) => {
                let diff = max_abs_diff(got, expected);
                assert!(diff <= TOL, "{name}: {key} differs by {diff:e}");
                worst = worst.max(diff);
                compared += 1;
            }
            None => assert!(not_exposed.contains(&hook), "{name}: we expose no '{hook}' (reference key {key})"),
        }
    }
    eprintln!("{name}{}: {compared} keys, max |diff| {worst:.2e}", if prefix.is_empty() { String::new() } else { format!(" ({prefix}*)") });
    compared
}

/// Every hook the model exposes (and its output) is among the compared reference keys.
fn assert_every_hook_compared(name: &str, model: &Model, compared: usize) {
    let exposed = model.hook_points().len();
    assert_eq!(compared, exposed, "{name}: {exposed} hooks exposed but {compared} compared with a reference");
}

#[test]
fn image_families_match_their_references() {
    // (fixture, reference keys we deliberately do not expose)
    for (name, not_exposed) in [
        ("timm-vit-tiny", &[][..]),
        ("timm-vit-gap", &[][..]),
        ("dinov2-reg-tiny", &["hook_pooled"][..]),
        ("dinov2-swiglu-tiny", &["hook_pooled"][..]),
        ("videomae-tiny", &["hook_pooled"][..]),
        ("vivit-tiny", &[][..]),
    ] {
        let model = load_at(name, None);
        let reference = reference(&format!("{name}.safetensors"));
        let ours = run_all(&model, &reference["pixel_values"]);
        let n = compare(name, &reference, &ours, "", not_exposed);
        assert_every_hook_compared(name, &model, n);
        assert_ln_eps(name, &model, &reference_metadata(&format!("{name}.safetensors")));
        eprintln!("{name} ({}): {n} reference keys within {TOL:e}", model.info.family);
    }
}

#[test]
fn dinov2_at_its_native_grid_matches_the_reference() {
    let model = load_at("dinov2-reg-tiny", Some([40, 40]));
    let reference = reference("dinov2-reg-tiny.safetensors");
    let ours = run_all(&model, &reference["pixel_values_40"]);
    let n = compare("dinov2-reg-tiny@40", &reference, &ours, "res40.", &[]);
    assert!(n >= 3);
}

fn clip_with_prompts(name: &str, size: Option<[i64; 2]>) -> Model {
    let mut model = load_at(name, size);
    let labels: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    model.set_class_prompts(labels.clone(), labels).expect("prompts set");
    model
}

#[test]
fn clip_families_match_their_references() {
    for name in ["clip-tiny", "openclip-tiny"] {
        let model = clip_with_prompts(name, None);
        let reference = reference(&format!("{name}.safetensors"));
        // The tokenizer (tokenizers crate on the folder's tokenizer.json) gives the reference ids.
        let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
        let (ids, mask) = model.tokenize(&prompts).unwrap();
        assert_eq!(ids, reference["input_ids"].f_to_kind(Kind::Int64).unwrap(), "{name}: token ids");
        match reference.get("attention_mask") {
            Some(expected) => assert_eq!(mask, expected.f_to_kind(Kind::Int64).unwrap(), "{name}: attention mask"),
            // open_clip pads with <|endoftext|> and masks nothing but the future
            None => assert_eq!(name, "openclip-tiny", "{name}: no attention_mask in the reference"),
        }
        let ours = run_all(&model, &reference["pixel_values"]);
        let n = compare(name, &reference, &ours, "", &[]);
        assert_every_hook_compared(name, &model, n);
        assert_ln_eps(name, &model, &reference_metadata(&format!("{name}.safetensors")));
        let probs = match reference.get("zero_shot_probs") {
            Some(probs) => probs.shallow_clone(),
            // open_clip's reference holds its logits (compared above) and no probabilities of its own
            None => {
                assert_eq!(name, "openclip-tiny", "{name}: no zero_shot_probs in the reference");
                reference["hook_logits"].f_softmax(-1, Kind::Float).unwrap()
            }
        };
        let got = ours["hook_logits"].f_softmax(-1, Kind::Float).unwrap();
        let diff = max_abs_diff(&got, &probs);
        assert!(diff <= TOL, "{name}: zero-shot probabilities differ by {diff:e}");
        eprintln!("{name}: {n} reference keys within {TOL:e} (text tower, projections, logits included)");
    }
}

/// Every `res<tag>.*` key of every reference: the model loaded at that size (its position table
/// interpolated the way the reference library does) against the library at that size, on image 0.
#[test]
fn every_reference_resolution_matches() {
    let mut tested = Vec::new();
    for name in ["vit-tiny-cls", "vit-odd", "deit-tiny", "timm-vit-tiny", "timm-vit-gap", "clip-tiny", "dinov2-reg-tiny"] {
        let reference = reference(&format!("{name}.safetensors"));
        let sizes = resolutions(&reference);
        let expected_keys = |tag: &str| reference.keys().filter(|k| k.starts_with(&format!("res{tag}."))).count();
        for (tag, size) in sizes {
            let model = if name == "clip-tiny" { clip_with_prompts(name, Some(size)) } else { load_at(name, Some(size)) };
            assert_eq!(model.vit.cfg.image_size, size, "{name}: loaded at {size:?}");
            let ours = run_all(&model, &reference[&format!("pixel_values_{tag}")]);
            let n = compare(&format!("{name}@{tag}"), &reference, &ours, &format!("res{tag}."), &[]);
            assert!(n >= 3 && n == expected_keys(&tag), "{name}@{tag}: {n} of {} res keys compared", expected_keys(&tag));
            tested.push(format!("{name}@{tag}"));
        }
    }
    // HF ViT (square and not), DeiT, timm (both poolings), HF CLIP, DINOv2 at its native grid
    assert_eq!(tested.len(), 7, "resolutions tested: {tested:?}");
}

#[test]
fn clip_at_another_resolution_interpolates_like_transformers() {
    let model = clip_with_prompts("clip-tiny", Some([48, 48]));
    let reference = reference("clip-tiny.safetensors");
    let ours = run_all(&model, &reference["pixel_values_48"]);
    let n = compare("clip-tiny@48", &reference, &ours, "res48.", &[]);
    assert!(n >= 3, "only {n} res48 keys compared");
}

/// An image size no machine could run (a typo) is refused before the position table is resized,
/// where the interpolation alone would get the process killed for memory.
#[test]
fn an_image_size_beyond_memory_is_refused_before_resizing() {
    let dir = fixtures().join("models").join("vit-tiny-cls");
    // 3e12 pixels alone: ~11 TB in f32.
    let err = Model::load_with(&dir, "cpu", "f32", &LoadOptions { image_size: Some([1_000_000, 1_000_000]), ..Default::default() })
        .err()
        .expect("refused");
    assert_eq!(err.code(), "E_ARGUMENT", "{err}");
    let text = err.to_string();
    assert!(text.contains("1000000x1000000") && text.contains("GB of memory"), "{text}");
    // A large size that fits still loads.
    load_at("vit-tiny-cls", Some([256, 256]));
}

#[test]
fn unsupported_folders_name_the_supported_families() {
    for bad in ["bad/swin-model", "bad/text-model"] {
        let err = Model::load(&fixtures().join(bad), "cpu", "f32").err().expect("rejected");
        let text = err.to_string();
        assert_eq!(err.code(), "E_UNSUPPORTED_MODEL", "{bad}: {text}");
        for family in ["CLIPModel", "Dinov2Model", "VideoMAE", "ViViT", "open_clip", "timm"] {
            assert!(text.contains(family), "{bad}: message does not list {family}: {text}");
        }
    }
}

#[test]
fn open_clip_pickle_checkpoint_loads_like_the_safetensors_one() {
    // fixtures/make_pickle_fixture.py: torch.save of the same state dict, one tensor a strided view.
    let from_bin = clip_with_prompts("openclip-tiny-bin", None);
    assert_eq!(from_bin.info.family, "open_clip");
    let reference = reference("openclip-tiny.safetensors");
    let ours = run_all(&from_bin, &reference["pixel_values"]);
    let n = compare("openclip-tiny-bin", &reference, &ours, "", &[]);
    assert_every_hook_compared("openclip-tiny-bin", &from_bin, n);
}

#[test]
fn class_prompts_must_be_the_same_number_for_every_label() {
    let mut model = load_at("clip-tiny", None);
    let labels: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
    let three: Vec<String> = ["a cat", "a dog", "a cow"].iter().map(|s| s.to_string()).collect();
    let err = model.set_class_prompts(labels.clone(), three).expect_err("3 prompts for 2 labels is refused");
    assert!(matches!(err, prisma_core::PrismaError::Argument(_)), "{err}");
    assert!(model.set_class_prompts(labels, Vec::new()).is_err());
}
