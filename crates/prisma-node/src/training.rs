//! Training entry points. TypeScript drives the loop (progress bar, evaluation, checkpoints) by
//! calling `trainSteps(n)` repeatedly; each call runs off the JS thread. One NativeTrainer class
//! over both trainers (a ViT classifier, or a CLIP on image-caption pairs), so the loop is shared.

use crate::convert::{guard, lock, sync, to_js_error};
use crate::torch_thread::TorchTask;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::training::clip::{captioned, ClipTrainConfig, ClipTrainer, ZeroShotTask};
use prisma_core::training::{dataset, TrainConfig, Trainer};
use prisma_core::PrismaError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub enum AnyTrainer {
    Vit(Box<Trainer>),
    Clip(Box<ClipTrainer>),
}

impl AnyTrainer {
    fn step(&self) -> i64 {
        match self {
            AnyTrainer::Vit(t) => t.step,
            AnyTrainer::Clip(t) => t.step,
        }
    }

    fn run(&mut self, op: &TrainerOp) -> prisma_core::Result<String> {
        let json = |v: &dyn erased::Json| v.to_json();
        match (self, op) {
            (AnyTrainer::Vit(t), TrainerOp::Steps(n)) => json(&t.train_steps(*n)?),
            (AnyTrainer::Clip(t), TrainerOp::Steps(n)) => json(&t.train_steps(*n)?),
            (AnyTrainer::Vit(t), TrainerOp::Evaluate) => json(&t.evaluate()?),
            (AnyTrainer::Clip(t), TrainerOp::Evaluate) => json(&t.evaluate()?),
            (AnyTrainer::Vit(t), TrainerOp::SaveModel(dir)) => t.save_model(dir).map(|_| "null".into()),
            (AnyTrainer::Clip(t), TrainerOp::SaveModel(dir)) => t.save_model(dir).map(|_| "null".into()),
            (AnyTrainer::Vit(t), TrainerOp::SaveCheckpoint(p)) => t.save_checkpoint(p).map(|_| "null".into()),
            (AnyTrainer::Clip(t), TrainerOp::SaveCheckpoint(p)) => t.save_checkpoint(p).map(|_| "null".into()),
            (AnyTrainer::Vit(t), TrainerOp::LoadCheckpoint(p)) => t.load_checkpoint(p).map(|_| t.step.to_string()),
            (AnyTrainer::Clip(t), TrainerOp::LoadCheckpoint(p)) => t.load_checkpoint(p).map(|_| t.step.to_string()),
        }
    }
}

mod erased {
    /// Serialises any report (the two trainers' reports differ in type).
    pub trait Json {
        fn to_json(&self) -> prisma_core::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> prisma_core::Result<String> {
            serde_json::to_string(self).map_err(|e| prisma_core::PrismaError::Internal(e.to_string()))
        }
    }
}

#[napi]
pub struct NativeTrainer {
    inner: Arc<Mutex<AnyTrainer>>,
}

pub enum TrainerOp {
    Steps(i64),
    Evaluate,
    SaveModel(PathBuf),
    SaveCheckpoint(PathBuf),
    LoadCheckpoint(PathBuf),
}

pub struct TrainerTask {
    trainer: Arc<Mutex<AnyTrainer>>,
    op: TrainerOp,
}

impl Task for TrainerTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| lock(&self.trainer)?.run(&self.op).map_err(to_js_error))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

#[napi]
impl NativeTrainer {
    /// `configJson`: TrainConfig (camelCase). Pixels are [N, C, H, W] float32, labels class indices.
    #[napi(factory)]
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        env: Env,
        config_json: String,
        train_pixels: Float32Array,
        train_shape: Vec<i64>,
        train_labels: Int32Array,
        eval_pixels: Float32Array,
        eval_shape: Vec<i64>,
        eval_labels: Int32Array,
    ) -> Result<NativeTrainer> {
        sync(&env, || {
            let cfg: TrainConfig = serde_json::from_str(&config_json)
                .map_err(|err| to_js_error(PrismaError::Argument(format!("bad training config: {err}"))))?;
            let n_classes = cfg.labels.len() as i32;
            let labels = |l: &Int32Array| -> Result<Vec<i64>> {
                l.iter()
                    .map(|&v| {
                        if v < 0 || v >= n_classes {
                            Err(to_js_error(PrismaError::Argument(format!("label {v} is outside 0..{}", n_classes - 1))))
                        } else {
                            Ok(v as i64)
                        }
                    })
                    .collect()
            };
            let train = dataset(&train_pixels, &train_shape, &labels(&train_labels)?).map_err(to_js_error)?;
            let eval = dataset(&eval_pixels, &eval_shape, &labels(&eval_labels)?).map_err(to_js_error)?;
            let trainer = Trainer::new(cfg, train, eval).map_err(to_js_error)?;
            Ok(NativeTrainer { inner: Arc::new(Mutex::new(AnyTrainer::Vit(Box::new(trainer)))) })
        })
    }

    /// A CLIP trainer. `configJson`: ClipTrainConfig (camelCase). Pixels are [N, C, H, W] float32
    /// with one caption per image; `tasksJson`: ZeroShotTask[] over the evaluation images.
    #[napi(factory)]
    #[allow(clippy::too_many_arguments)]
    pub fn create_clip(
        env: Env,
        config_json: String,
        train_pixels: Float32Array,
        train_shape: Vec<i64>,
        train_captions: Vec<String>,
        eval_pixels: Float32Array,
        eval_shape: Vec<i64>,
        eval_captions: Vec<String>,
        tasks_json: String,
    ) -> Result<NativeTrainer> {
        sync(&env, || {
            let bad = |what: &str, err: serde_json::Error| to_js_error(PrismaError::Argument(format!("bad {what}: {err}")));
            let cfg: ClipTrainConfig = serde_json::from_str(&config_json).map_err(|e| bad("CLIP training config", e))?;
            let tasks: Vec<ZeroShotTask> = serde_json::from_str(&tasks_json).map_err(|e| bad("zero-shot tasks", e))?;
            let train = captioned(&train_pixels, &train_shape, train_captions).map_err(to_js_error)?;
            let eval = captioned(&eval_pixels, &eval_shape, eval_captions).map_err(to_js_error)?;
            // Tokenizing and initialising run libtorch: on its thread, like every other call.
            let trainer = crate::torch_thread::run(|| ClipTrainer::new(cfg, train, eval, tasks)).map_err(to_js_error)?;
            Ok(NativeTrainer { inner: Arc::new(Mutex::new(AnyTrainer::Clip(Box::new(trainer)))) })
        })
    }

    /// Resolves to a JSON StepReport {step, loss, accuracy, lr} (CLIP: plus logitScale).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn train_steps(&self, n: u32) -> TorchTask<TrainerTask> {
        self.task(TrainerOp::Steps(n as i64))
    }

    /// Resolves to a JSON EvalReport {step, loss, accuracy, n} (CLIP: plus zeroShot[]).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn evaluate(&self) -> TorchTask<TrainerTask> {
        self.task(TrainerOp::Evaluate)
    }

    #[napi(ts_return_type = "Promise<string>")]
    pub fn save_model(&self, dir: String) -> TorchTask<TrainerTask> {
        self.task(TrainerOp::SaveModel(dir.into()))
    }

    #[napi(ts_return_type = "Promise<string>")]
    pub fn save_checkpoint(&self, path: String) -> TorchTask<TrainerTask> {
        self.task(TrainerOp::SaveCheckpoint(path.into()))
    }

    /// Resolves to the restored step (as a string).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn load_checkpoint(&self, path: String) -> TorchTask<TrainerTask> {
        self.task(TrainerOp::LoadCheckpoint(path.into()))
    }

    #[napi]
    pub fn step(&self, env: Env) -> Result<i64> {
        sync(&env, || Ok(lock(&self.inner)?.step()))
    }

    fn task(&self, op: TrainerOp) -> TorchTask<TrainerTask> {
        TorchTask(TrainerTask { trainer: self.inner.clone(), op })
    }
}
