//! The activation cache and SAE training (prisma_core::sae::{cache, run}). TypeScript reads and
//! preprocesses the images and hands pixel batches to `NativeSaeCache.append`; training runs as
//! one task on the libtorch thread while JS polls `drain()` for the step metrics it logs and draws.

use crate::convert::{guard, internal, lock, sync, to_js_error};
use crate::torch_thread::TorchTask;
use crate::NativeModel;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::model::from_f32;
use prisma_core::sae::cache::{self, CacheReader, CacheRequest, CacheWriter};
use prisma_core::sae::run::{self, TrainRequest};
use prisma_core::{Model, PrismaError};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn bad(what: &str, e: serde_json::Error) -> Error {
    to_js_error(PrismaError::Argument(format!("bad {what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| to_js_error(PrismaError::Internal(e.to_string())))
}

#[napi]
pub struct NativeSaeCache {
    writer: Arc<Mutex<Option<CacheWriter>>>,
}

pub struct CacheOpenTask {
    model: Arc<Mutex<Model>>,
    dir: PathBuf,
    spec: String,
}

impl Task for CacheOpenTask {
    type Output = CacheWriter;
    type JsValue = NativeSaeCache;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let request: CacheRequest = serde_json::from_str(&self.spec).map_err(|e| bad("cache request", e))?;
            let spec = request.into_spec().map_err(to_js_error)?;
            let model = lock(&self.model)?;
            CacheWriter::open(&self.dir, &model, spec).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(NativeSaeCache { writer: Arc::new(Mutex::new(Some(output))) })
    }
}

pub struct CacheAppendTask {
    model: Arc<Mutex<Model>>,
    writer: Arc<Mutex<Option<CacheWriter>>>,
    pixels: (Vec<i64>, Vec<f32>),
}

impl Task for CacheAppendTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let model = lock(&self.model)?;
            model.use_threads();
            let pixels = from_f32(&self.pixels.0, &self.pixels.1).map_err(to_js_error)?;
            let mut writer = lock(&self.writer)?;
            let w = writer.as_mut().ok_or_else(|| internal("the cache is already finished"))?;
            w.append(&model, &pixels).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, _output: Self::Output) -> Result<Self::JsValue> {
        Ok(())
    }
}

#[napi]
impl NativeSaeCache {
    /// Opens (or resumes) a cache folder; `specJson`: hooks, tokens, dtype, imagesPerShard,
    /// modelFingerprint, preprocessing, shard, images, inputs, info.
    #[napi(ts_return_type = "Promise<NativeSaeCache>")]
    pub fn open(model: &NativeModel, dir: String, spec_json: String) -> TorchTask<CacheOpenTask> {
        TorchTask(CacheOpenTask { model: model.inner.clone(), dir: dir.into(), spec: spec_json })
    }

    /// Images already in complete shards (a resumed run skips them).
    #[napi]
    pub fn images_done(&self, env: Env) -> Result<i64> {
        sync(&env, || {
            let w = lock(&self.writer)?;
            Ok(w.as_ref().map_or(0, CacheWriter::images_done))
        })
    }

    /// The metadata so far, as JSON.
    #[napi]
    pub fn meta(&self, env: Env) -> Result<String> {
        sync(&env, || {
            let w = lock(&self.writer)?;
            let w = w.as_ref().ok_or_else(|| internal("the cache is already finished"))?;
            to_json(w.meta())
        })
    }

    /// The block the forward stops before (none: the whole model runs).
    #[napi]
    pub fn stop_at_layer(&self, env: Env) -> Result<Option<u32>> {
        sync(&env, || {
            let w = lock(&self.writer)?;
            Ok(w.as_ref().and_then(CacheWriter::stop_at_layer).map(|l| l as u32))
        })
    }

    /// Runs `model` on a pixel batch and appends its activations.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn append(&self, model: &NativeModel, pixels: Float32Array, shape: Vec<i64>) -> TorchTask<CacheAppendTask> {
        TorchTask(CacheAppendTask { model: model.inner.clone(), writer: self.writer.clone(), pixels: (shape, pixels.to_vec()) })
    }

    /// Marks the cache complete; returns its metadata as JSON.
    #[napi]
    pub fn finish(&self, env: Env) -> Result<String> {
        sync(&env, || {
            let mut w = lock(&self.writer)?;
            let writer = w.take().ok_or_else(|| internal("the cache is already finished"))?;
            let meta = writer.finish().map_err(to_js_error)?;
            to_json(&meta)
        })
    }
}

/// Checks a complete cache (every shard's header and size) and returns its metadata as JSON.
#[napi]
pub fn sae_cache_info(env: Env, dir: String) -> Result<String> {
    sync(&env, || {
        let reader = CacheReader::open(std::path::Path::new(&dir)).map_err(to_js_error)?;
        to_json(&reader.meta)
    })
}

/// Merges complete caches of the same activations into `dst`; returns its metadata as JSON.
#[napi]
pub fn sae_cache_merge(env: Env, dst: String, srcs: Vec<String>) -> Result<String> {
    sync(&env, || {
        let srcs: Vec<PathBuf> = srcs.into_iter().map(PathBuf::from).collect();
        let meta = cache::merge(std::path::Path::new(&dst), &srcs).map_err(to_js_error)?;
        to_json(&meta)
    })
}

const LOG_FILE: &str = "training_log.jsonl";

/// The log at `path` keeping only the lines of steps before `step`, open for appending.
fn open_log(path: &std::path::Path, step: i64) -> std::io::Result<std::fs::File> {
    let kept: String = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("step").and_then(|s| s.as_i64())).is_some_and(|s| s < step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept)?;
    std::fs::OpenOptions::new().append(true).open(path)
}

#[napi]
pub struct NativeSaeTraining {
    /// Step metrics not yet drained, one JSON object per line: {"sae": i, ...StepMetrics}.
    pending: Arc<Mutex<Vec<String>>>,
    request: Arc<Mutex<Option<TrainRequest>>>,
}

pub struct TrainTask {
    pending: Arc<Mutex<Vec<String>>>,
    request: Arc<Mutex<Option<TrainRequest>>>,
}

impl Task for TrainTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let req = lock(&self.request)?.take().ok_or_else(|| internal("training already started"))?;
            if req.outs.len() != req.configs.len() {
                return Err(internal("one output folder per SAE"));
            }
            let reader = CacheReader::open(std::path::Path::new(&req.cache)).map_err(to_js_error)?;
            let mut source = reader.source(&req.hook, req.options.batch_size).map_err(to_js_error)?;
            let pending = self.pending.clone();
            // Each SAE's log is appended here, before the step's checkpoint can be written, so a
            // killed run's log holds every step its checkpoint has; a resumed run first drops the
            // lines of steps it will run again.
            let mut logs: Vec<Option<std::fs::File>> = req.outs.iter().map(|_| None).collect();
            let log_paths: Vec<PathBuf> = req.outs.iter().map(|o| PathBuf::from(o).join(LOG_FILE)).collect();
            let mut on_step = |i: usize, m: &prisma_core::sae::train::StepMetrics| -> prisma_core::Result<()> {
                let line = serde_json::to_string(m).map_err(|e| PrismaError::Internal(e.to_string()))?;
                let path = &log_paths[i];
                let io = |e: std::io::Error| PrismaError::Io { path: path.clone(), reason: e.to_string() };
                if logs[i].is_none() {
                    logs[i] = Some(open_log(path, m.step).map_err(io)?);
                }
                if let Some(file) = logs[i].as_mut() {
                    file.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
                }
                if let Ok(mut p) = pending.lock() {
                    p.push(format!("{{\"sae\":{i},{}", &line[1..]));
                }
                Ok(())
            };
            let saes = run::train(&mut source, &req.configs, &req.options, &mut on_step).map_err(to_js_error)?;
            for (sae, out) in saes.iter().zip(&req.outs) {
                prisma_core::sae::save(sae, std::path::Path::new(out)).map_err(to_js_error)?;
            }
            to_json(&serde_json::json!({ "rows": source.rows(), "position": prisma_core::sae::run::ActivationSource::position(&source) }))
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

#[napi]
impl NativeSaeTraining {
    /// `requestJson`: {cache, hook, configs: SaeTrainConfig[], options: RunOptions, outs}.
    #[napi(constructor)]
    pub fn new(env: Env, request_json: String) -> Result<NativeSaeTraining> {
        sync(&env, || {
            let req: TrainRequest = serde_json::from_str(&request_json).map_err(|e| bad("SAE training request", e))?;
            Ok(NativeSaeTraining { pending: Arc::new(Mutex::new(Vec::new())), request: Arc::new(Mutex::new(Some(req))) })
        })
    }

    /// Trains every SAE in one pass over the cache (resuming from the checkpoint folder when it
    /// holds one) and saves each as a SAELens folder; resolves to {rows, position} as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn run(&self) -> TorchTask<TrainTask> {
        TorchTask(TrainTask { pending: self.pending.clone(), request: self.request.clone() })
    }

    /// Step metrics since the last call, one JSON object each.
    #[napi]
    pub fn drain(&self, env: Env) -> Result<Vec<String>> {
        sync(&env, || Ok(std::mem::take(&mut *lock(&self.pending)?)))
    }
}
