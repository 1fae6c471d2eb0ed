//! SAEs read from SAELens folders (written by sae-lens 6.54.12 itself), ViT-Prisma files and saev
//! checkpoints (written following their code): encode, decode, every sub-hook and the spliced
//! model's logits against fixtures/reference/sae.safetensors (fixtures/make_sae_fixtures.py), plus
//! round trips and the bad inputs, each with its code.

mod common;

use common::{fixtures, load, reference};
use prisma_core::sae::{self, LoadOptions, Sae, SubHook, TokenSelection};
use prisma_core::{PrismaError, RunRequest};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Largest |a - b| (common::max_abs_diff: NaN anywhere is infinite, so it never passes).
fn diff(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b)
}

fn sae_dir(rel: &str) -> PathBuf {
    fixtures().join("sae").join(rel)
}

/// The tolerance for an SAE computing in `kind`: 1e-5 in float32; half precision rounds each
/// product to ~3 (bf16) or ~4 (f16) significant digits, so the same ops agree to their epsilon.
fn tol(kind: Kind, scale: f64) -> f64 {
    match kind {
        Kind::Half => 2e-3 * scale.max(1.0),
        Kind::BFloat16 => 2e-2 * scale.max(1.0),
        _ => 1e-5,
    }
}

/// The model's logits with `sae` spliced at its hook over its tokens (hooks::splice).
fn spliced_logits(model: &prisma_core::Model, pixels: &Tensor, sae: &Sae) -> Tensor {
    let again = sae.to_kind(sae.cfg.kind).unwrap();
    let spec = sae::splice_spec(again, false).unwrap();
    model.run(RunRequest { pixels: Some(pixels.shallow_clone()), splices: vec![spec], ..Default::default() }).unwrap().output
}

struct Case {
    name: &'static str,
    path: &'static str,
}

const SAELENS: &[Case] = &[
    Case { name: "standard", path: "saelens/standard" },
    Case { name: "standard-no-bdec", path: "saelens/standard-no-bdec" },
    Case { name: "standard-layer-norm", path: "saelens/standard-layer-norm" },
    Case { name: "standard-constant-norm", path: "saelens/standard-constant-norm" },
    Case { name: "standard-expected-average", path: "saelens/standard-expected-average" },
    Case { name: "standard-f16", path: "saelens/standard-f16" },
    Case { name: "standard-cls", path: "saelens/standard-cls" },
    Case { name: "gated", path: "saelens/gated" },
    Case { name: "topk", path: "saelens/topk" },
    Case { name: "topk-rescale", path: "saelens/topk-rescale" },
    Case { name: "topk-bf16", path: "saelens/topk-bf16" },
    Case { name: "jumprelu", path: "saelens/jumprelu" },
    Case { name: "batchtopk", path: "saelens/batchtopk" },
    Case { name: "matryoshka", path: "saelens/matryoshka" },
    // Training checkpoints (architecture batchtopk / matryoshka_batchtopk) read as SAELens's
    // save_inference_model would write them: same reference as the inference folders.
    Case { name: "batchtopk", path: "saelens/batchtopk-checkpoint" },
    Case { name: "matryoshka", path: "saelens/matryoshka-checkpoint" },
    Case { name: "pre6-topk", path: "saelens/pre6-topk" },
];

fn check_saelens(sae: &Sae, name: &str, r: &BTreeMap<String, Tensor>, model: &prisma_core::Model, pixels: &Tensor) -> Vec<(String, f64)> {
    let x = &r[&format!("{name}.x")];
    let kind = sae.cfg.kind;
    let mut diffs = Vec::new();
    let mut record = |what: &str, got: &Tensor, scale: f64| {
        let want = &r[&format!("{name}.{what}")];
        let d = diff(&got.to_kind(Kind::Float), want);
        assert!(d <= tol(kind, scale), "{name} {what}: max |diff| {d:e}");
        diffs.push((what.to_string(), d));
    };
    let acts = sae.encode(x).unwrap();
    record("encode", &acts, acts.abs().max().to_kind(Kind::Double).double_value(&[]));
    let recons = sae.reconstruct(x).unwrap();
    record("decode", &recons, x.abs().max().double_value(&[]));
    // Every sub-hook of the spliced forward, with the error term (SAELens use_error_term=True).
    let mut seen: BTreeMap<SubHook, Tensor> = BTreeMap::new();
    let out = sae
        .forward_hooked(x, true, &mut |h, t| {
            seen.insert(h, t.shallow_clone());
            Ok(t)
        })
        .unwrap();
    assert_eq!(seen.len(), 6, "{name}: every sub-hook visited");
    for h in SubHook::ALL {
        let scale = seen[&h].abs().max().to_kind(Kind::Double).double_value(&[]);
        let key = format!("{name}.{}", h.spelling());
        let want = &r[&key];
        let d = diff(&seen[&h].to_kind(Kind::Float), want);
        assert!(d <= tol(kind, scale), "{key}: max |diff| {d:e}");
    }
    // With the error term the output is the input again.
    assert!(diff(&out.to_kind(Kind::Float), x) <= tol(kind, 1.0) * 10.0, "{name}: error term restores x");
    let logits = spliced_logits(model, pixels, sae);
    let d = diff(&logits, &r[&format!("{name}.logits")]);
    assert!(d <= tol(kind, 1.0), "{name} spliced logits: max |diff| {d:e}");
    diffs.push(("logits".into(), d));
    diffs
}

#[test]
fn saelens_folders_match_sae_lens() {
    let r = reference("sae.safetensors");
    let model = load("vit-tiny-cls");
    let pixels = reference("vit-tiny-cls.safetensors")["pixel_values"].shallow_clone();
    for case in SAELENS {
        let sae = sae::load(&sae_dir(case.path), &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", case.path));
        let diffs = check_saelens(&sae, case.name, &r, &model, &pixels);
        eprintln!("{:32} {}", case.path, diffs.iter().map(|(k, d)| format!("{k} {d:.1e}")).collect::<Vec<_>>().join("  "));
    }
}

#[test]
fn round_trip_keeps_weights_config_and_metadata() {
    let r = reference("sae.safetensors");
    let tmp = std::env::temp_dir().join(format!("prisma-sae-roundtrip-{}", std::process::id()));
    for case in SAELENS {
        let sae = sae::load(&sae_dir(case.path), &LoadOptions::default()).unwrap();
        let out = tmp.join(case.path.replace('/', "_"));
        sae::save(&sae, &out).unwrap();
        let again = sae::load(&out, &LoadOptions::default()).unwrap();
        for ((n1, t1), (n2, t2)) in sae.named_tensors().into_iter().zip(again.named_tensors()) {
            assert_eq!(n1, n2);
            assert_eq!(t1.kind(), t2.kind(), "{} {n1} dtype", case.path);
            assert_eq!(diff(t1, t2), 0.0, "{} {n1}", case.path);
        }
        // A migrated pre-6.0 config is written as 6.x (or SAELens would migrate it again) and says so.
        let mut kept = again.cfg.metadata.clone();
        if case.path.contains("pre6") {
            assert_eq!(kept.remove("migrated_from_sae_lens_version"), Some(serde_json::json!("3.13.0")));
            assert_eq!(kept.insert("sae_lens_version".into(), serde_json::json!("3.13.0")), Some(serde_json::json!("6.54.12")));
        }
        assert_eq!(sae.cfg.metadata, kept, "{} metadata", case.path);
        let x = &r[&format!("{}.x", case.name)];
        assert_eq!(diff(&sae.reconstruct(x).unwrap(), &again.reconstruct(x).unwrap()), 0.0);
        // A 6.x folder written back is the same config, key for key (dtype spelled canonically).
        if !case.path.contains("checkpoint") && !case.path.contains("pre6") && !case.path.contains("expected") {
            let original: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(sae_dir(case.path).join("cfg.json")).unwrap()).unwrap();
            let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("cfg.json")).unwrap()).unwrap();
            assert_eq!(original, written, "{} cfg.json", case.path);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn hook_and_tokens_come_from_the_config_and_can_be_overridden() {
    let sae = sae::load(&sae_dir("saelens/standard-layer-norm"), &LoadOptions::default()).unwrap();
    assert_eq!(sae.cfg.hook_name(), Some("blocks.0.hook_mlp_out"));
    assert_eq!(sae.cfg.tokens(), TokenSelection::All);
    assert_eq!(sae::load(&sae_dir("saelens/standard-cls"), &LoadOptions::default()).unwrap().cfg.tokens(), TokenSelection::Cls);
    let opts = LoadOptions { hook: Some("blocks.0.hook_resid_post".into()), tokens: Some(TokenSelection::Patches), ..Default::default() };
    let moved = sae::load(&sae_dir("saelens/standard-layer-norm"), &opts).unwrap();
    assert_eq!(moved.cfg.hook_name(), Some("blocks.0.hook_resid_post"));
    assert_eq!(moved.cfg.tokens(), TokenSelection::Patches);
    let bad = LoadOptions { hook: Some("blocks.0.hook_nothing".into()), ..Default::default() };
    assert_eq!(sae::load(&sae_dir("saelens/standard"), &bad).unwrap_err().code(), "E_UNKNOWN_HOOK");
    // The pre-6.0 config's hook_point became metadata.hook_name, as SAELens migrates it.
    assert_eq!(
        sae::load(&sae_dir("saelens/pre6-topk"), &LoadOptions::default()).unwrap().cfg.hook_name(),
        Some("blocks.1.hook_resid_post")
    );
}

/// ViT-Prisma and saev files, read without unpickling, against their own forward math.
#[test]
fn imported_formats_match_their_sources() {
    let r = reference("sae.safetensors");
    let model = load("vit-tiny-cls");
    let pixels = reference("vit-tiny-cls.safetensors")["pixel_values"].shallow_clone();
    let cases = [
        ("prisma-topk-cls", "vit-prisma/topk-cls", "blocks.1.hook_resid_post", TokenSelection::Cls),
        ("prisma-topk-cls", "vit-prisma/topk-cls/weights.pt", "blocks.1.hook_resid_post", TokenSelection::Cls),
        ("prisma-legacy-standard", "vit-prisma/legacy-standard.pt", "blocks.0.hook_mlp_out", TokenSelection::Patches),
        ("prisma-legacy-gated", "vit-prisma/legacy-gated.pkl.gz", "blocks.1.hook_resid_post", TokenSelection::All),
        ("saev-topk", "saev/topk", "", TokenSelection::All),
        ("saev-batchtopk", "saev/batchtopk/sae.pt", "", TokenSelection::All),
    ];
    let tmp = std::env::temp_dir().join(format!("prisma-sae-import-{}", std::process::id()));
    for (name, path, hook, tokens) in cases {
        // saev checkpoints do not name their layer: the hook is given.
        let opts = if hook.is_empty() {
            LoadOptions { hook: Some("blocks.1.hook_resid_post".into()), ..Default::default() }
        } else {
            LoadOptions::default()
        };
        let sae = sae::load(&sae_dir(path), &opts).unwrap_or_else(|e| panic!("{path}: {e}"));
        if !hook.is_empty() {
            assert_eq!(sae.cfg.hook_name(), Some(hook), "{path}");
        }
        assert_eq!(sae.cfg.tokens(), tokens, "{path}");
        let x = &r[&format!("{name}.x")];
        let d_enc = diff(&sae.encode(x).unwrap(), &r[&format!("{name}.encode")]);
        let d_out = diff(&sae.reconstruct(x).unwrap(), &r[&format!("{name}.hook_sae_output")]);
        let d_logits = diff(&spliced_logits(&model, &pixels, &sae), &r[&format!("{name}.logits")]);
        eprintln!("{path:36} encode {d_enc:.1e}  output {d_out:.1e}  logits {d_logits:.1e}");
        assert!(d_enc <= 1e-5 && d_out <= 1e-5 && d_logits <= 1e-5, "{path}: {d_enc:e} {d_out:e} {d_logits:e}");
        // Converted to a SAELens folder, it computes the same.
        let out = tmp.join(name);
        let written = sae::convert(&sae_dir(path), &out, &opts).unwrap();
        let back = sae::load(&out, &LoadOptions::default()).unwrap();
        assert_eq!(diff(&back.reconstruct(x).unwrap(), &written.reconstruct(x).unwrap()), 0.0, "{path} converted");
        assert_eq!(back.cfg.tokens(), tokens);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn code(path: &str, opts: &LoadOptions) -> (String, String) {
    let e: PrismaError = sae::load(&sae_dir(path), opts).expect_err(path);
    (e.code().to_string(), e.to_string())
}

#[test]
fn bad_inputs_fail_with_one_clear_code() {
    let opts = LoadOptions::default();
    let (c, msg) = code("bad/unknown-arch", &opts);
    assert_eq!(c, "E_CONFIG");
    assert!(msg.contains("unknown SAE architecture 'hypersparse'"), "{msg}");
    let (c, msg) = code("bad/truncated", &opts);
    assert_eq!(c, "E_WEIGHTS_FORMAT", "{msg}");
    for evil in ["bad/runs-code.pkl", "bad/runs-code.pt"] {
        let (c, msg) = code(evil, &opts);
        assert_eq!(c, "E_UNSAFE_PICKLE", "{evil}: {msg}");
        assert!(msg.contains("posix.system") || msg.contains("os.system"), "{msg}");
        assert_eq!(msg.lines().count(), 1);
    }
    // d_in 48 against a 32-wide hook, and a hook the model lacks: caught when checked against the model.
    let model = load("vit-tiny-cls");
    let wide = sae::load(&sae_dir("bad/wrong-d-in"), &opts).unwrap();
    let e = sae::check_against_model(&wide, &model).unwrap_err();
    assert_eq!(e.code(), "E_SHAPE", "{e}");
    assert!(e.to_string().contains("d_in 48") && e.to_string().contains("32"), "{e}");
    let far = sae::load(&sae_dir("bad/missing-hook"), &opts).unwrap();
    let e = sae::check_against_model(&far, &model).unwrap_err();
    assert!(matches!(e.code(), "E_UNKNOWN_HOOK" | "E_LAYER_RANGE"), "{e}");
    assert!(e.to_string().contains("blocks.7.hook_resid_post"), "{e}");
    // Encoding a vector of the wrong width is E_SHAPE, not a libtorch crash.
    let good = sae::load(&sae_dir("saelens/standard"), &opts).unwrap();
    assert_eq!(good.encode(&Tensor::zeros([2, 31], (Kind::Float, tch::Device::Cpu))).unwrap_err().code(), "E_SHAPE");
    assert!(sae::check_against_model(&good, &model).is_ok());
    // Not there at all.
    assert_eq!(code("saelens/nowhere", &opts).0, "E_IO");
}
