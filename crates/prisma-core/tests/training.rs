//! Training: learns a learnable toy task, saves a folder the HF loader reads back with identical
//! outputs, and resumes from a checkpoint exactly where continuous training would be.

mod common;
use prisma_core::training::{TrainConfig, Trainer};
use prisma_core::{Model, RunRequest};
use tch::{Device, Kind, Tensor};

/// Training draws from libtorch's global RNG (one trainer per process in real use); the test
/// harness runs tests on parallel threads, so these tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn config(total_steps: i64) -> TrainConfig {
    TrainConfig {
        image_size: 16,
        patch_size: 4,
        num_channels: 3,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_mlp: 32,
        activation: "gelu".into(),
        labels: vec!["dark".into(), "bright".into()],
        batch_size: 16,
        total_steps,
        lr: 3e-3,
        weight_decay: 0.01,
        warmup_steps: 5,
        seed: 7,
    }
}

/// Class = whether the image is brighter than zero on average: learnable in a few dozen steps.
fn data(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let y = Tensor::randint(2, [n], (Kind::Int64, Device::Cpu));
    let shift = (y.to_kind(Kind::Float) * 2.0 - 1.0).view([n, 1, 1, 1]) * 0.5;
    let x = Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu)) + shift;
    (x, y)
}

#[test]
fn learns_saves_and_reloads_identically() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Trainer::new(config(60), data(256, 1), data(128, 2)).unwrap();
    let before = t.evaluate().unwrap();
    t.train_steps(60).unwrap();
    let after = t.evaluate().unwrap();
    eprintln!("eval accuracy {:.3} -> {:.3}", before.accuracy, after.accuracy);
    assert!(after.accuracy > 0.9, "accuracy {}", after.accuracy);
    let dir = std::env::temp_dir().join(format!("prisma-train-{}", std::process::id()));
    t.save_model(&dir).unwrap();
    let model = Model::load(&dir, "cpu", "f32").unwrap();
    let (x, _) = data(8, 3);
    let reloaded = model.run(RunRequest { pixels: Some(x.shallow_clone()), ..Default::default() }).unwrap().output;
    let own = tch::no_grad(|| {
        let none = prisma_core::hooks::HookSelection::none();
        let mut ctx = prisma_core::hooks::HookCtx::new(&none, &[]);
        t.vit.forward(prisma_core::models::vit::ForwardStart::Pixels(&x), None, &mut ctx).unwrap().1
    });
    let worst = common::max_abs_diff(&reloaded, &own);
    assert!(worst <= 1e-5, "reloaded logits differ by {worst}");
    assert_eq!(model.info.labels, vec!["dark".to_string(), "bright".to_string()]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resuming_from_a_checkpoint_matches_continuous_training() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut straight = Trainer::new(config(40), data(128, 1), data(32, 2)).unwrap();
    straight.train_steps(40).unwrap();

    let path = std::env::temp_dir().join(format!("prisma-ckpt-{}.safetensors", std::process::id()));
    let mut first = Trainer::new(config(40), data(128, 1), data(32, 2)).unwrap();
    first.train_steps(17).unwrap();
    first.save_checkpoint(&path).unwrap();
    drop(first);
    let mut resumed = Trainer::new(config(40), data(128, 1), data(32, 2)).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    assert_eq!(resumed.step, 17);
    resumed.train_steps(40).unwrap();
    assert_eq!(resumed.step, 40);
    let (a, b) = (straight.evaluate().unwrap(), resumed.evaluate().unwrap());
    assert_eq!(a.loss, b.loss, "resumed training diverged");
    // A checkpoint from another config is refused.
    let mut other = Trainer::new(config(41), data(128, 1), data(32, 2)).unwrap();
    assert_eq!(other.load_checkpoint(&path).unwrap_err().code(), "E_TENSOR_FILE");
    std::fs::remove_file(&path).ok();
}
