//! CLIP training: learns a toy image-caption pairing, saves an HF CLIPModel folder that the loader
//! reads back with the same zero-shot logits and the same tokenization, and resumes from a
//! checkpoint exactly where continuous training would be.

mod common;
use prisma_core::training::clip::{encode_texts, CaptionedImages, ClipTrainConfig, ClipTrainer, ZeroShotTask};
use prisma_core::{Model, RunRequest};
use tch::{Device, Kind, Tensor};

/// Training draws from libtorch's global RNG (one trainer per process in real use); the test
/// harness runs tests on parallel threads, so these tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const COLOURS: [&str; 4] = ["red", "green", "blue", "yellow"];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

fn tokenizer_dir() -> String {
    common::fixtures().join("tokenizers/clevr-lite").to_string_lossy().into_owned()
}

fn config(total_steps: i64) -> ClipTrainConfig {
    ClipTrainConfig {
        image_size: 16,
        patch_size: 4,
        num_channels: 3,
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        d_mlp: 64,
        text_d_model: 32,
        text_layers: 1,
        text_heads: 2,
        text_d_mlp: 64,
        context_length: 12,
        projection_dim: 16,
        activation: "quick_gelu".into(),
        tokenizer: tokenizer_dir(),
        batch_size: 16,
        total_steps,
        lr: 3e-3,
        weight_decay: 0.01,
        warmup_steps: 5,
        seed: 5,
    }
}

/// Image i is noise plus a colour offset on channel (colour mod 3) and a brightness set by the
/// shape; its caption names both ("a large green square"): learnable in a few dozen steps.
fn data(n: i64, seed: i64) -> (CaptionedImages, Vec<i64>) {
    tch::manual_seed(seed);
    let colour = Tensor::randint(COLOURS.len() as i64, [n], (Kind::Int64, Device::Cpu));
    let shape = Tensor::randint(SHAPES.len() as i64, [n], (Kind::Int64, Device::Cpu));
    let colours = Vec::<i64>::try_from(&colour).unwrap();
    let shapes = Vec::<i64>::try_from(&shape).unwrap();
    let pixels = Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
    for i in 0..n as usize {
        let c = colours[i];
        let img = pixels.get(i as i64);
        let _ = img.narrow(0, c % 3, 1).g_add_scalar_(if c < 3 { 1.0 } else { -1.0 });
        let _ = img.narrow(1, 0, 8).g_add_scalar_(shapes[i] as f64 - 1.0);
    }
    let captions = (0..n as usize).map(|i| format!("a large {} {}", COLOURS[colours[i] as usize], SHAPES[shapes[i] as usize])).collect();
    (CaptionedImages { pixels, captions }, colours)
}

fn colour_task(labels: Vec<i64>) -> ZeroShotTask {
    ZeroShotTask {
        name: "colour".into(),
        classes: COLOURS.iter().map(|c| c.to_string()).collect(),
        prompts: COLOURS.iter().map(|c| format!("a large {c}")).collect(),
        labels,
    }
}

fn trainer(total_steps: i64) -> ClipTrainer {
    let (train, _) = data(256, 1);
    let (eval, labels) = data(64, 2);
    ClipTrainer::new(config(total_steps), train, eval, vec![colour_task(labels)]).unwrap()
}

#[test]
fn learns_saves_and_reloads_with_the_same_zero_shot_logits() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = trainer(80);
    let before = t.evaluate().unwrap();
    let first = t.train_steps(10).unwrap();
    t.train_steps(70).unwrap();
    let after = t.evaluate().unwrap();
    let zs = &after.zero_shot[0];
    eprintln!("held-out loss {:.3} -> {:.3}; zero-shot colour {:.3} (chance {:.3})", before.loss, after.loss, zs.accuracy, zs.chance);
    assert!(after.loss < before.loss, "held-out loss did not fall");
    assert!(zs.accuracy > 2.0 * zs.chance, "zero-shot accuracy {} vs chance {}", zs.accuracy, zs.chance);
    assert!(first.logit_scale > 0.0 && first.logit_scale <= 100.0);

    let dir = std::env::temp_dir().join(format!("prisma-clip-train-{}", std::process::id()));
    t.save_model(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["model_max_length"], 12);

    let mut model = Model::load(&dir, "cpu", "f32").unwrap();
    assert_eq!(model.info.family, "clip");
    assert!(model.info.unexpected_tensors.is_empty(), "{:?}", model.info.unexpected_tensors);
    let prompts: Vec<String> = colour_task(vec![]).prompts;
    // Training and inference encode text identically.
    let (ids, mask) = model.tokenize(&prompts).unwrap();
    let tokenizer = model.tokenizer.as_ref().unwrap();
    let pad = tokenizer.token_to_id("<|endoftext|>").unwrap() as i64;
    let (ids2, mask2) = encode_texts(tokenizer, &prompts, 12, pad, false).unwrap();
    assert!(ids.equal(&ids2) && mask.equal(&mask2));

    model.set_class_prompts(COLOURS.iter().map(|c| c.to_string()).collect(), prompts.clone()).unwrap();
    let (x, _) = data(8, 3);
    let reloaded = model.run(RunRequest { pixels: Some(x.pixels.shallow_clone()), ..Default::default() }).unwrap().output;
    let own = t.zero_shot_logits(&x.pixels, &prompts).unwrap();
    let worst = common::max_abs_diff(&reloaded, &own);
    eprintln!("reloaded zero-shot logits differ by at most {worst:e}");
    assert!(worst <= 1e-5, "reloaded logits differ by {worst}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resuming_from_a_checkpoint_matches_continuous_training() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut straight = trainer(30);
    straight.train_steps(30).unwrap();

    let path = std::env::temp_dir().join(format!("prisma-clip-ckpt-{}.safetensors", std::process::id()));
    let mut first = trainer(30);
    first.train_steps(13).unwrap();
    first.save_checkpoint(&path).unwrap();
    drop(first);
    let mut resumed = trainer(30);
    resumed.load_checkpoint(&path).unwrap();
    assert_eq!(resumed.step, 13);
    resumed.train_steps(30).unwrap();
    assert_eq!(resumed.step, 30);
    let (a, b) = (straight.evaluate().unwrap(), resumed.evaluate().unwrap());
    assert_eq!(a.loss, b.loss, "resumed training diverged");
    assert_eq!(straight.temperature().unwrap(), resumed.temperature().unwrap());
    // A checkpoint from another config is refused.
    let (train, _) = data(256, 1);
    let (eval, labels) = data(64, 2);
    let mut other = ClipTrainer::new(config(31), train, eval, vec![colour_task(labels)]).unwrap();
    assert_eq!(other.load_checkpoint(&path).unwrap_err().code(), "E_TENSOR_FILE");
    std::fs::remove_file(&path).ok();
}

#[test]
fn refuses_captions_longer_than_the_context() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut train, _) = data(32, 1);
    train.captions[3] = "a large red circle, a small blue square and a small green triangle".into();
    let (eval, labels) = data(8, 2);
    let err = ClipTrainer::new(config(10), train, eval, vec![colour_task(labels)]).err().expect("too-long caption refused");
    assert_eq!(err.code(), "E_ARGUMENT");
    assert!(err.to_string().contains("context"), "{err}");
}
