//! Node binding for prisma-core. No model logic lives here: argument conversion, one error
//! conversion (`E_CODE: message`), and one task per long operation so the JS thread stays free
//! (a `TorchTask` on the libtorch thread; an `AsyncTask` on the libuv pool for saving, which touches
//! no libtorch).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod analysis;
mod convert;
mod tasks;
mod torch_thread;
mod training;

use convert::{guard, lock, to_js_error, TensorData, TensorInput};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::model::to_f32_vec;
use prisma_core::Model;
use std::sync::{Arc, Mutex};
use tasks::{RunTask, SaveTask};
use torch_thread::TorchTask;

#[napi(object)]
pub struct LoadOptions {
    pub device: Option<String>,
    pub dtype: Option<String>,
    /// [height, width] to run at (position embeddings are resized at load).
    pub image_size: Option<Vec<i64>>,
    /// Load weights holding NaN or infinities (refused by default).
    pub allow_nonfinite: Option<bool>,
}

#[napi(object)]
pub struct ModelInfo {
    pub family: String,
    pub architecture: String,
    pub source_format: String,
    pub model_dir: String,
    pub config_json: String,
    pub n_params: i64,
    pub image_size: Vec<i64>,
    pub patch_size: i64,
    pub num_channels: i64,
    pub n_layers: u32,
    pub n_heads: i64,
    pub d_model: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    pub n_pos: i64,
    pub n_patches: i64,
    pub has_class_token: bool,
    pub n_classes: i64,
    pub labels: Vec<String>,
    pub activation: String,
    pub device: String,
    pub dtype: String,
    pub unexpected_tensors: Vec<String>,
    pub num_frames: i64,
    pub tubelet_size: i64,
    pub n_registers: i64,
    pub n_prefix_tokens: i64,
    pub has_text_tower: bool,
}

#[napi(object)]
pub struct HookShape {
    pub name: String,
    pub shape: Vec<i64>,
}

#[napi(object)]
pub struct RunOptions {
    pub cache: Option<Vec<String>>,
    pub stop_at_layer: Option<u32>,
    pub start_at_layer: Option<u32>,
    pub start_resid: Option<TensorInput>,
    pub interventions: Option<String>,
    pub tensors: Option<Vec<TensorInput>>,
}

#[napi]
pub struct NativeModel {
    pub(crate) inner: Arc<Mutex<Model>>,
}

/// Loading a model folder, on the libtorch thread (loading creates libtorch tensors).
pub struct LoadTask {
    pub dir: String,
    pub device: String,
    pub dtype: String,
    pub image_size: Option<Vec<i64>>,
    pub allow_nonfinite: bool,
}

impl Task for LoadTask {
    type Output = Model;
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let image_size = match self.image_size.as_deref() {
                None => None,
                Some([n]) => Some([*n, *n]),
                Some([h, w]) => Some([*h, *w]),
                Some(other) => {
                    return Err(to_js_error(prisma_core::PrismaError::Argument(format!(
                        "image size {other:?}: give [size] or [height, width]"
                    ))))
                }
            };
            let opts = prisma_core::weights::family::LoadOptions { image_size, allow_nonfinite: self.allow_nonfinite };
            Model::load_with(std::path::Path::new(&self.dir), &self.device, &self.dtype, &opts).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(NativeModel { inner: Arc::new(Mutex::new(output)) })
    }
}

#[napi]
impl NativeModel {
    /// Loads a model folder off the JS thread.
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn load(dir: String, options: Option<LoadOptions>) -> TorchTask<LoadTask> {
        let (device, dtype, image_size, allow_nonfinite) =
            options.map(|o| (o.device, o.dtype, o.image_size, o.allow_nonfinite)).unwrap_or((None, None, None, None));
        TorchTask(LoadTask {
            dir,
            device: device.unwrap_or_default(),
            dtype: dtype.unwrap_or_default(),
            image_size,
            allow_nonfinite: allow_nonfinite.unwrap_or(false),
        })
    }

    #[napi]
    pub fn info(&self) -> Result<ModelInfo> {
        guard(|| {
            let m = lock(&self.inner)?;
            let c = &m.vit.cfg;
            Ok(ModelInfo {
                family: m.info.family.clone(),
                architecture: m.info.architecture.clone(),
                source_format: m.info.source_format.clone(),
                model_dir: m.info.model_dir.to_string_lossy().into_owned(),
                config_json: m.info.config_json.clone(),
                n_params: m.info.n_params,
                image_size: c.image_size.to_vec(),
                patch_size: c.patch_size,
                num_channels: c.num_channels,
                n_layers: c.n_layers as u32,
                n_heads: c.n_heads,
                d_model: c.d_model,
                d_head: c.d_head,
                d_mlp: c.d_mlp,
                n_pos: c.n_pos(),
                n_patches: c.n_patches(),
                has_class_token: c.has_class_token,
                n_classes: c.n_classes,
                labels: m.info.labels.clone(),
                activation: c.activation.name().to_string(),
                device: m.device_name(),
                dtype: m.dtype_name().to_string(),
                unexpected_tensors: m.info.unexpected_tensors.clone(),
                num_frames: c.num_frames,
                tubelet_size: c.tubelet_size,
                n_registers: c.n_registers,
                n_prefix_tokens: c.n_prefix_tokens(),
                has_text_tower: m.text.is_some(),
            })
        })
    }

    #[napi]
    pub fn hook_shapes(&self, batch: u32) -> Result<Vec<HookShape>> {
        guard(|| {
            let m = lock(&self.inner)?;
            Ok(m.hook_points().into_iter().map(|p| HookShape { name: p.to_string(), shape: m.hook_shape(p, batch as i64) }).collect())
        })
    }

    #[napi]
    pub fn match_hooks(&self, patterns: Vec<String>) -> Result<Vec<String>> {
        guard(|| {
            let m = lock(&self.inner)?;
            let selection = m.resolve_hooks(&patterns).map_err(to_js_error)?;
            Ok(m.hook_points().into_iter().filter(|p| selection.contains(p)).map(|p| p.to_string()).collect())
        })
    }

    /// Makes a CLIP-style model classify against text prompts (`labels[i]` ↔ `prompts[i]`): its
    /// logits become logit_scale · cos(image, prompt) for every later call.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_class_prompts(&self, labels: Vec<String>, prompts: Vec<String>) -> TorchTask<tasks::PromptsTask> {
        TorchTask(tasks::PromptsTask { model: self.inner.clone(), labels, prompts })
    }

    /// Gives a headless model a linear probe (`weight` [C, d], `bias` [C]) read from a tensor file.
    #[napi]
    pub fn set_linear_probe(&self, path: String, labels: Option<Vec<String>>) -> Result<()> {
        guard(|| {
            crate::torch_thread::run(|| {
                let mut model = lock(&self.inner)?;
                model.set_linear_probe(std::path::Path::new(&path), labels).map_err(to_js_error)
            })
        })
    }

    /// Runs a hooked forward off the JS thread. Inputs are copied here, on the JS thread.
    #[napi(ts_return_type = "Promise<RunOutput>")]
    pub fn run(&self, pixels: Float32Array, shape: Vec<i64>, options: Option<RunOptions>) -> Result<TorchTask<RunTask>> {
        guard(|| {
            let options = options.unwrap_or(RunOptions {
                cache: None,
                stop_at_layer: None,
                start_at_layer: None,
                start_resid: None,
                interventions: None,
                tensors: None,
            });
            let pixels = if options.start_at_layer.is_some() && pixels.is_empty() { None } else { Some((shape, pixels.to_vec())) };
            Ok(TorchTask(RunTask {
                model: self.inner.clone(),
                pixels,
                cache: options.cache.unwrap_or_default(),
                stop_at_layer: options.stop_at_layer.map(|l| l as usize),
                start_at_layer: options.start_at_layer.map(|l| l as usize),
                start_resid: options.start_resid.map(|t| (t.shape, t.data.to_vec())),
                interventions: options.interventions,
                tensors: options.tensors.unwrap_or_default().into_iter().map(|t| (t.name, t.shape, t.data.to_vec())).collect(),
            }))
        })
    }
}

/// Reads a `.npy` (one tensor, named `pixel_values`) or `.safetensors` file as float32 tensors.
#[napi]
pub fn read_tensor_file(path: String) -> Result<Vec<TensorData>> {
    guard(|| {
        let tensors = prisma_core::tensor_file::read_tensor_file(std::path::Path::new(&path)).map_err(to_js_error)?;
        tensors
            .into_iter()
            .map(|(name, t)| {
                let (shape, data) = to_f32_vec(&t).map_err(to_js_error)?;
                Ok(TensorData { name, shape, dtype: "float32".into(), data: data.into() })
            })
            .collect()
    })
}

/// Writes float32 tensors to a safetensors file atomically (temp file + rename).
#[napi(ts_return_type = "Promise<void>")]
pub fn save_safetensors(
    path: String,
    tensors: Vec<TensorInput>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> AsyncTask<SaveTask> {
    let tensors = tensors.into_iter().map(|t| (t.name, t.shape, t.data.to_vec())).collect();
    AsyncTask::new(SaveTask { path, tensors, metadata })
}

#[napi]
pub fn cuda_available() -> bool {
    prisma_core::cuda_available()
}

#[napi]
pub fn libtorch_version() -> String {
    // tch pins one libtorch release; the build script refuses any other.
    "2.11.0".to_string()
}

#[napi]
pub fn libtorch_lib_dir() -> Option<String> {
    prisma_core::libtorch_lib_dir().map(|d| d.display().to_string())
}
