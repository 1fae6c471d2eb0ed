//! Training entry points. TypeScript drives the loop (progress bar, evaluation, checkpoints) by
//! calling `trainSteps(n)` repeatedly; each call runs off the JS thread.

use crate::convert::{guard, lock, to_js_error};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::training::{dataset, TrainConfig, Trainer};
use prisma_core::PrismaError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[napi]
pub struct NativeTrainer {
    inner: Arc<Mutex<Trainer>>,
}

pub enum TrainerOp {
    Steps(i64),
    Evaluate,
    SaveModel(PathBuf),
    SaveCheckpoint(PathBuf),
    LoadCheckpoint(PathBuf),
}

pub struct TrainerTask {
    trainer: Arc<Mutex<Trainer>>,
    op: TrainerOp,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| to_js_error(PrismaError::Internal(e.to_string())))
}

impl Task for TrainerTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| crate::torch_thread::run(|| {
            let mut t = lock(&self.trainer)?;
            let e = to_js_error;
            match &self.op {
                TrainerOp::Steps(n) => json(&t.train_steps(*n).map_err(e)?),
                TrainerOp::Evaluate => json(&t.evaluate().map_err(e)?),
                TrainerOp::SaveModel(dir) => t.save_model(dir).map_err(e).map(|_| "null".into()),
                TrainerOp::SaveCheckpoint(p) => t.save_checkpoint(p).map_err(e).map(|_| "null".into()),
                TrainerOp::LoadCheckpoint(p) => t.load_checkpoint(p).map_err(e).map(|_| t.step.to_string()),
            }
        }))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

#[napi]
impl NativeTrainer {
    /// `configJson`: TrainConfig (camelCase). Pixels are [N, C, H, W] float32, labels class indices.
    #[napi(factory)]
    pub fn create(
        config_json: String,
        train_pixels: Float32Array,
        train_shape: Vec<i64>,
        train_labels: Int32Array,
        eval_pixels: Float32Array,
        eval_shape: Vec<i64>,
        eval_labels: Int32Array,
    ) -> Result<NativeTrainer> {
        guard(|| {
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
            Ok(NativeTrainer { inner: Arc::new(Mutex::new(trainer)) })
        })
    }

    /// Resolves to a JSON StepReport {step, loss, accuracy, lr}.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn train_steps(&self, n: u32) -> AsyncTask<TrainerTask> {
        self.task(TrainerOp::Steps(n as i64))
    }

    /// Resolves to a JSON EvalReport {step, loss, accuracy, n}.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn evaluate(&self) -> AsyncTask<TrainerTask> {
        self.task(TrainerOp::Evaluate)
    }

    #[napi(ts_return_type = "Promise<string>")]
    pub fn save_model(&self, dir: String) -> AsyncTask<TrainerTask> {
        self.task(TrainerOp::SaveModel(dir.into()))
    }

    #[napi(ts_return_type = "Promise<string>")]
    pub fn save_checkpoint(&self, path: String) -> AsyncTask<TrainerTask> {
        self.task(TrainerOp::SaveCheckpoint(path.into()))
    }

    /// Resolves to the restored step (as a string).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn load_checkpoint(&self, path: String) -> AsyncTask<TrainerTask> {
        self.task(TrainerOp::LoadCheckpoint(path.into()))
    }

    #[napi]
    pub fn step(&self) -> Result<i64> {
        Ok(lock(&self.inner)?.step)
    }

    fn task(&self, op: TrainerOp) -> AsyncTask<TrainerTask> {
        AsyncTask::new(TrainerTask { trainer: self.inner.clone(), op })
    }
}
