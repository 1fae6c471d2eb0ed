//! Node binding for prisma-core. No model logic lives here: argument conversion, one error
//! conversion (a JS Error with the core's `code`, `message`, `hint` and `data`), and one task per long operation so the JS thread stays free
//! (a `TorchTask` on the libtorch thread; an `AsyncTask` on the libuv pool for saving, which touches
//! no libtorch).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod analysis;
mod convert;
pub mod sae;
pub mod sae_train;
mod tasks;
mod torch_thread;
mod training;

use convert::{guard, lock, sync, to_js_error, TensorData, TensorInput};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::model::to_f32_vec;
use prisma_core::Model;
use std::sync::{Arc, Mutex};
use tasks::{RunTask, SaveTask};
use torch_thread::TorchTask;

#[napi(object)]
pub struct LoadOptions {
    /// 'cpu' (default), 'cuda', 'cuda:N'.
    pub device: Option<String>,
    /// 'f32' (default), 'f16', 'bf16'.
    pub dtype: Option<String>,
    /// [size] or [height, width] to run at (position embeddings are resized at load).
    pub image_size: Option<Vec<i64>>,
    /// Load weights holding NaN or infinities (refused by default).
    pub allow_nonfinite: Option<bool>,
}

#[napi(object)]
pub struct ModelInfo {
    /// 'vit', 'deit', 'dinov2', 'clip', 'videomae', 'vivit', ... (docs/models.md).
    pub family: String,
    /// The checkpoint's class, e.g. 'ViTForImageClassification', 'ViTModel'.
    pub architecture: String,
    /// 'hf', 'timm' or 'open_clip'.
    pub source_format: String,
    pub model_dir: String,
    /// config.json as read.
    pub config_json: String,
    pub n_params: i64,
    /// [height, width] the model runs at.
    pub image_size: Vec<i64>,
    pub patch_size: i64,
    pub num_channels: i64,
    pub n_layers: u32,
    pub n_heads: i64,
    pub d_model: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    /// Tokens: prefix tokens (class, distillation, registers) and patches.
    pub n_pos: i64,
    pub n_patches: i64,
    pub has_class_token: bool,
    /// 0 when the model has no classification head.
    pub n_classes: i64,
    /// id2label in index order ([] when none).
    pub labels: Vec<String>,
    /// 'gelu', 'gelu_tanh', 'quick_gelu', 'relu' or 'silu'.
    pub activation: String,
    /// 'cpu', 'cuda:0', ...
    pub device: String,
    /// 'float32', 'float16' or 'bfloat16'.
    pub dtype: String,
    /// Checkpoint tensors the loader did not use.
    pub unexpected_tensors: Vec<String>,
    /// Video models: frames per clip (input [B, T, C, H, W]); 0 for image models.
    pub num_frames: i64,
    /// Video models: frames per tubelet (tokens are time-major over numFrames / tubeletSize slices).
    pub tubelet_size: i64,
    /// Register tokens (DINOv2 -reg), after the class token.
    pub n_registers: i64,
    /// Class, distillation and register tokens before the patches (token nPrefixTokens is the first patch).
    pub n_prefix_tokens: i64,
    /// A text tower (CLIP, open_clip): zero-shot classes are text prompts.
    pub has_text_tower: bool,
}

/// A hook point's name and shape, batch axis first.
#[napi(object)]
pub struct HookShape {
    pub name: String,
    pub shape: Vec<i64>,
}

#[napi(object)]
pub struct RunOptions {
    /// Hook names or glob patterns ('blocks.*.hook_resid_post', '*'); a pattern matching nothing is E_UNKNOWN_HOOK.
    pub cache: Option<Vec<String>>,
    /// Run blocks [0, stopAtLayer) only; the output is then blocks.{stopAtLayer}.hook_resid_pre.
    pub stop_at_layer: Option<u32>,
    /// Start at this block from `startResid` (its hook_resid_pre); pixels are ignored (pass an empty array).
    pub start_at_layer: Option<u32>,
    pub start_resid: Option<TensorInput>,
    /// JSON array of InterventionSpec (src/generated/contract/InterventionSpec.ts).
    pub interventions: Option<String>,
    /// Named tensors the interventions refer to.
    pub tensors: Option<Vec<TensorInput>>,
    /// Keep the error term of the SAEs spliced into this run (`run`'s `saes`).
    pub sae_error_term: Option<bool>,
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
    pub fn info(&self, env: Env) -> Result<ModelInfo> {
        sync(&env, || {
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

    /// Every hook point in forward order (hook_result included), at this batch size.
    #[napi]
    pub fn hook_shapes(&self, env: Env, batch: u32) -> Result<Vec<HookShape>> {
        sync(&env, || {
            let m = lock(&self.inner)?;
            Ok(m.hook_points().into_iter().map(|p| HookShape { name: p.to_string(), shape: m.hook_shape(p, batch as i64) }).collect())
        })
    }

    /// The hook names the patterns select, in forward order; E_UNKNOWN_HOOK for a pattern matching nothing.
    #[napi]
    pub fn match_hooks(&self, env: Env, patterns: Vec<String>) -> Result<Vec<String>> {
        sync(&env, || {
            let m = lock(&self.inner)?;
            let selection = m.resolve_hooks(&patterns).map_err(to_js_error)?;
            Ok(m.hook_points().into_iter().filter(|p| selection.contains(p)).map(|p| p.to_string()).collect())
        })
    }

    /// Makes a CLIP-style model classify against text prompts: its logits become
    /// logit_scale · cos(image, prompt) for every later call. k = prompts.length / labels.length
    /// prompts per label, label-major; k > 1 averages their unit embeddings (prompt ensembling).
    /// Uneven counts: E_ARGUMENT.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_class_prompts(&self, labels: Vec<String>, prompts: Vec<String>) -> TorchTask<tasks::PromptsTask> {
        TorchTask(tasks::PromptsTask { model: self.inner.clone(), labels, prompts })
    }

    /// Gives a headless model a linear probe (`weight` [C, d_model], `bias` [C]) read from a .safetensors file.
    #[napi]
    pub fn set_linear_probe(&self, env: Env, path: String, labels: Option<Vec<String>>) -> Result<()> {
        sync(&env, || {
            crate::torch_thread::run(|| {
                let mut model = lock(&self.inner)?;
                model.set_linear_probe(std::path::Path::new(&path), labels).map_err(to_js_error)
            })
        })
    }

    /// Runs a hooked forward off the JS thread (pixels [B, C, H, W], video [B, T, C, H, W]).
    /// Inputs are copied here, on the JS thread. `saes` are spliced into this run only, after
    /// those of `splice`.
    #[napi(ts_return_type = "Promise<RunOutput>")]
    pub fn run(
        &self,
        env: Env,
        pixels: Float32Array,
        shape: Vec<i64>,
        options: Option<RunOptions>,
        saes: Option<Vec<&sae::NativeSae>>,
    ) -> Result<TorchTask<RunTask>> {
        sync(&env, || {
            let options = options.unwrap_or(RunOptions {
                cache: None,
                stop_at_layer: None,
                start_at_layer: None,
                start_resid: None,
                interventions: None,
                tensors: None,
                sae_error_term: None,
            });
            let error_term = options.sae_error_term.unwrap_or(false);
            let saes = saes.unwrap_or_default();
            let splices = saes.iter().map(|s| s.splice_spec(error_term)).collect::<Result<Vec<_>>>()?;
            let modules = saes.iter().map(|s| s.module.clone()).collect();
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
                splices,
                modules,
            }))
        })
    }
}

/// Sparse autoencoders in a model (the work is in `sae`).
#[napi]
impl NativeModel {
    /// Splices `sae` into every later run of this model, at its hook over its tokens; its
    /// sub-hooks (`HOOK.hook_sae_acts_post`, ...) join the hook points. With `error_term` the
    /// model's output is unchanged unless a sub-hook is edited.
    #[napi]
    pub fn splice(&self, env: Env, sae: &sae::NativeSae, error_term: Option<bool>) -> Result<()> {
        sync(&env, || sae::splice_into(&self.inner, sae, error_term.unwrap_or(false)))
    }

    /// Removes every spliced SAE.
    #[napi]
    pub fn clear_splices(&self, env: Env) -> Result<()> {
        sync(&env, || {
            torch_thread::run(|| {
                lock(&self.inner)?.clear_splices();
                Ok(())
            })
        })
    }

    /// Starts an evaluation of `sae` in this model (checked against it: hook, width): feed the
    /// mean pass, then `startMetrics`, then the metrics pass.
    #[napi]
    pub fn sae_eval(&self, env: Env, sae: &sae::NativeSae) -> Result<sae::NativeSaeEval> {
        sync(&env, || sae::NativeSaeEval::new(&self.inner, sae))
    }
}

/// Reads a `.npy` (one tensor, named `pixel_values`) or `.safetensors` file as float32 tensors.
#[napi]
pub fn read_tensor_file(env: Env, path: String) -> Result<Vec<TensorData>> {
    sync(&env, || {
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

/// Writes float32 tensors to a safetensors file atomically (temp file + rename); off the
/// libtorch thread.
#[napi(ts_return_type = "Promise<void>")]
pub fn save_safetensors(
    path: String,
    tensors: Vec<TensorInput>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> AsyncTask<SaveTask> {
    let tensors = tensors.into_iter().map(|t| (t.name, t.shape, t.data.to_vec())).collect();
    AsyncTask::new(SaveTask { path, tensors, metadata })
}

/// Every error code the core can emit (src/errors.ts keeps the matching registry; a test compares).
#[napi]
pub fn error_codes() -> Vec<String> {
    prisma_core::error::codes().into_iter().map(String::from).collect()
}

/// Whether a CUDA device can be used.
#[napi]
pub fn cuda_available() -> bool {
    prisma_core::cuda_available()
}

/// The libtorch release the addon was built for.
#[napi]
pub fn libtorch_version() -> String {
    // tch pins one libtorch release; the build script refuses any other.
    "2.11.0".to_string()
}

/// libtorch's library folder, as the loader set it (PRISMA_LIBTORCH_LIB).
#[napi]
pub fn libtorch_lib_dir() -> Option<String> {
    prisma_core::libtorch_lib_dir().map(|d| d.display().to_string())
}
