//! Bad inputs become coded errors, never panics.

mod common;
use common::*;
use prisma_core::{Model, PrismaError, RunRequest};

fn load_err(path: &str) -> PrismaError {
    match Model::load(&fixtures().join(path), "cpu", "f32") {
        Ok(_) => panic!("{path} loaded"),
        Err(e) => e,
    }
}

#[test]
fn bad_model_folders_get_coded_errors() {
    assert_eq!(load_err("bad/no-config").code(), "E_MODEL_DIR");
    assert_eq!(load_err("bad/truncated-model").code(), "E_WEIGHTS_FORMAT");
    assert_eq!(load_err("bad/text-model").code(), "E_UNSUPPORTED_MODEL");
    assert_eq!(load_err("does/not/exist").code(), "E_MODEL_DIR");
    assert!(load_err("bad/text-model").to_string().contains("ViTForImageClassification"));
    assert_eq!(Model::load(&fixtures().join("models/vit-tiny-cls"), "cuda:7", "f32").err().map(|e| e.code()), Some("E_DEVICE"));
    assert_eq!(Model::load(&fixtures().join("models/vit-tiny-cls"), "cpu", "f8").err().map(|e| e.code()), Some("E_DTYPE"));
}

#[test]
fn bad_hooks_and_layers_get_coded_errors() {
    let model = load("vit-tiny-cls");
    let pixels = reference("vit-tiny-cls.safetensors").remove("pixel_values").unwrap();
    let run = |cache: &str, stop: Option<usize>| {
        model
            .run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec![cache.into()], stop_at_layer: stop, ..Default::default() })
            .err()
            .map(|e| e.code())
    };
    assert_eq!(run("blocks.*.hook_nonsense", None), Some("E_UNKNOWN_HOOK"));
    assert_eq!(run("blocks.0.hook_resid", None), Some("E_UNKNOWN_HOOK"));
    assert_eq!(run("blocks.5.hook_resid_post", None), Some("E_LAYER_RANGE"));
    assert_eq!(run("blocks.0.hook_resid_post", Some(9)), Some("E_LAYER_RANGE"));
    let wrong = tch::Tensor::zeros([1, 3, 31, 32], (tch::Kind::Float, tch::Device::Cpu));
    let e = model.run(RunRequest { pixels: Some(wrong), ..Default::default() }).err().map(|e| e.code());
    assert_eq!(e, Some("E_SHAPE"));
}
