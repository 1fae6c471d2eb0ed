//! Pickle (`torch.save`) weights as transformers, timm and open_clip write them
//! (fixtures/checkpoints, made by fixtures/make_checkpoint_fixtures.py with those libraries) load to
//! exactly the model of the safetensors fixture with the same weights: every hook is equal, bit
//! for bit. And a pickle that would run a command when unpickled by Python is refused unrun.

mod common;
use common::*;
use prisma_core::{Model, RunRequest};
use std::collections::HashMap;
use tch::Tensor;

fn run_all(model: &Model, pixels: &Tensor) -> HashMap<String, Tensor> {
    let out = model
        .run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec!["*".into()], ..Default::default() })
        .expect("forward runs");
    let mut all: HashMap<String, Tensor> = out.cache.into_iter().map(|(p, t)| (p.to_string(), t)).collect();
    all.insert(out.output_name.to_string(), out.output);
    all
}

fn with_prompts(mut model: Model) -> Model {
    if model.text.is_some() {
        let prompts: Vec<String> = ["a photo of a cat.", "a photo of a dog."].iter().map(|s| s.to_string()).collect();
        model.set_class_prompts(prompts.clone(), prompts).expect("prompts set");
    }
    model
}

#[test]
fn pickle_checkpoints_load_the_same_model_as_the_safetensors_fixture() {
    // (checkpoint folder, safetensors fixture with the same weights)
    let cases = [
        ("vit-bin", "vit-tiny-cls"),         // transformers save_pretrained(safe_serialization=False): a plain dict
        ("vit-sharded-bin", "vit-tiny-cls"), // the same, sharded, with pytorch_model.bin.index.json
        ("timm-bin", "timm-vit-gap"),        // timm save_for_hf: torch.save(state_dict())
        ("timm-train", "timm-vit-gap"),      // timm training checkpoint: state_dict_ema is read
        ("openclip-epoch", "openclip-tiny"), // open_clip training checkpoint: 'module.' prefixes
    ];
    for (dir, fixture) in cases {
        let from_bin =
            with_prompts(Model::load(&fixtures().join("checkpoints").join(dir), "cpu", "f32").unwrap_or_else(|e| panic!("{dir}: {e}")));
        let from_st = with_prompts(load(fixture));
        assert_eq!(from_bin.info.family, from_st.info.family, "{dir}");
        assert_eq!(from_bin.info.n_params, from_st.info.n_params, "{dir}: parameter count");
        assert!(from_bin.info.unexpected_tensors.is_empty(), "{dir}: unexpected {:?}", from_bin.info.unexpected_tensors);
        let pixels = &reference(&format!("{fixture}.safetensors"))["pixel_values"];
        let a = run_all(&from_bin, pixels);
        let b = run_all(&from_st, pixels);
        assert_eq!(a.len(), b.len(), "{dir}: hooks");
        for (name, t) in &b {
            // torch.equal: same shape and values, infinities included (the text tower's masked scores are -inf).
            assert!(a[name].equal(t), "{dir}: {name} differs");
        }
        eprintln!("{dir}: {} hooks identical to {fixture}", b.len());
    }
}

#[test]
fn a_pickle_that_would_run_code_is_refused_without_running_it() {
    let dir = fixtures().join("checkpoints").join("evil-bin");
    let marker = std::env::current_dir().unwrap().join("prisma-evil-pickle-ran");
    let _ = std::fs::remove_file(&marker);
    let err = Model::load(&dir, "cpu", "f32").err().expect("refused");
    assert_eq!(err.code(), "E_WEIGHTS_FORMAT", "{err}");
    assert!(err.to_string().contains("holds no tensors"), "{err}");
    assert!(!marker.exists(), "the pickle's command ran");
}
