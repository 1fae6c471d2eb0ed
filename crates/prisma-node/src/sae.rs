//! Sparse autoencoders: load any supported format (prisma_core::sae), describe, save as a SAELens
//! folder, convert, and splice into a model (for every later run, or one run). No SAE logic here.

use crate::convert::{guard, lock, sync, to_js_error};
use crate::torch_thread::TorchTask;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::device::{dtype_name, parse_device, parse_dtype};
use prisma_core::hooks::SpliceSpec;
use prisma_core::sae::{self, SaeModule, TokenSelection};
use prisma_core::PrismaError;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[napi(object)]
pub struct SaeLoadOptions {
    /// The hook it reads, overriding its config (TransformerLens spelling).
    pub hook: Option<String>,
    /// 'all', 'cls' or 'patches', overriding its config.
    pub tokens: Option<String>,
    /// SAELens `expected_average_only_in`: the dataset scaling factor to fold into the weights.
    pub scaling_factor: Option<f64>,
    /// Cast the weights: 'f32', 'f16', 'bf16'.
    pub dtype: Option<String>,
    /// Where the weights live: 'cpu', 'cuda', 'cuda:N'.
    pub device: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SaeInfo {
    pub path: String,
    /// The format read: 'saelens', 'vit-prisma' or 'saev'.
    pub format: String,
    /// Inference architecture: 'standard', 'gated', 'topk' or 'jumprelu'.
    pub architecture: String,
    pub d_in: i64,
    pub d_sae: i64,
    pub k: Option<i64>,
    pub dtype: String,
    pub device: String,
    pub hook_name: Option<String>,
    pub tokens: String,
    pub apply_b_dec_to_input: bool,
    pub normalize_activations: String,
    /// The config as a SAELens cfg.json would hold it.
    pub config_json: String,
}

/// A loaded SAE, shared by the splices made from it.
#[napi]
pub struct NativeSae {
    pub(crate) module: Arc<Mutex<SaeModule>>,
    info: SaeInfo,
}

fn load_sae(path: &str, options: &Option<SaeLoadOptions>) -> std::result::Result<(sae::Sae, sae::SourceFormat), PrismaError> {
    let p = Path::new(path);
    let format = sae::detect_format(p)?;
    let mut opts = sae::LoadOptions::default();
    let mut device = None;
    if let Some(o) = options {
        opts.hook = o.hook.clone();
        opts.tokens = o.tokens.as_deref().map(TokenSelection::parse).transpose()?;
        opts.scaling_factor = o.scaling_factor;
        opts.kind = o.dtype.as_deref().map(parse_dtype).transpose()?;
        device = o.device.as_deref().map(parse_device).transpose()?;
    }
    let loaded = sae::load(p, &opts)?;
    let loaded = match device {
        Some(d) if d != loaded.device() => loaded.to_device(d)?,
        _ => loaded,
    };
    Ok((loaded, format))
}

fn describe(path: &str, format: sae::SourceFormat, s: &sae::Sae) -> std::result::Result<SaeInfo, PrismaError> {
    let cfg = &s.cfg;
    let json = serde_json::to_string(&cfg.to_saelens_json()).map_err(|e| PrismaError::Internal(e.to_string()))?;
    Ok(SaeInfo {
        path: path.to_string(),
        format: format.name().into(),
        architecture: cfg.architecture.name().into(),
        d_in: cfg.d_in,
        d_sae: cfg.d_sae,
        k: cfg.k,
        dtype: dtype_name(cfg.kind).into(),
        device: prisma_core::device::device_name(s.device()),
        hook_name: cfg.hook_name().map(str::to_owned),
        tokens: cfg.tokens().name().into(),
        apply_b_dec_to_input: cfg.apply_b_dec_to_input,
        normalize_activations: cfg.normalize_activations.name().into(),
        config_json: json,
    })
}

pub struct SaeLoadTask {
    path: String,
    options: Option<SaeLoadOptions>,
}

impl Task for SaeLoadTask {
    type Output = (sae::Sae, SaeInfo);
    type JsValue = NativeSae;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let (s, format) = load_sae(&self.path, &self.options).map_err(to_js_error)?;
            let info = describe(&self.path, format, &s).map_err(to_js_error)?;
            Ok((s, info))
        })
    }

    fn resolve(&mut self, _env: Env, (s, info): Self::Output) -> Result<Self::JsValue> {
        Ok(NativeSae { module: Arc::new(Mutex::new(SaeModule::new(s))), info })
    }
}

pub struct SaeSaveTask {
    module: Arc<Mutex<SaeModule>>,
    dir: String,
}

impl Task for SaeSaveTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let m = lock(&self.module)?;
            sae::save(&m.sae, Path::new(&self.dir)).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, _out: Self::Output) -> Result<Self::JsValue> {
        Ok(())
    }
}

pub struct SaeConvertTask {
    src: String,
    dst: String,
    options: Option<SaeLoadOptions>,
}

impl Task for SaeConvertTask {
    type Output = SaeInfo;
    type JsValue = SaeInfo;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let (s, format) = load_sae(&self.src, &self.options).map_err(to_js_error)?;
            sae::save(&s, Path::new(&self.dst)).map_err(to_js_error)?;
            describe(&self.src, format, &s).map_err(to_js_error)
        })
    }

    fn resolve(&mut self, _env: Env, info: Self::Output) -> Result<Self::JsValue> {
        Ok(info)
    }
}

#[napi]
impl NativeSae {
    /// Loads an SAE (SAELens folder, ViT-Prisma file or folder, saev sae.pt) off the JS thread;
    /// pickles are read as data, never run.
    #[napi(ts_return_type = "Promise<NativeSae>")]
    pub fn load(path: String, options: Option<SaeLoadOptions>) -> TorchTask<SaeLoadTask> {
        TorchTask(SaeLoadTask { path, options })
    }

    #[napi]
    pub fn info(&self) -> SaeInfo {
        self.info.clone()
    }

    /// Writes it as a SAELens folder (each file atomically).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, dir: String) -> TorchTask<SaeSaveTask> {
        TorchTask(SaeSaveTask { module: self.module.clone(), dir })
    }

    pub(crate) fn splice_spec(&self, use_error_term: bool) -> Result<SpliceSpec> {
        sae::shared_splice_spec(&self.module, use_error_term).map_err(to_js_error)
    }
}

/// Reads any supported SAE and writes it as a SAELens folder; resolves to what was read.
#[napi(ts_return_type = "Promise<SaeInfo>")]
pub fn convert_sae(src: String, dst: String, options: Option<SaeLoadOptions>) -> TorchTask<SaeConvertTask> {
    TorchTask(SaeConvertTask { src, dst, options })
}

/// Refuses an SAE on another device than the model (libtorch would fail mid-forward).
pub(crate) fn check_module_device(model: &prisma_core::Model, module: &Mutex<SaeModule>) -> std::result::Result<(), PrismaError> {
    let sae_dev = module.lock().map_err(|_| PrismaError::Internal("SAE lock poisoned".into()))?.sae.device();
    if model.info.device != sae_dev {
        return Err(PrismaError::Device(format!(
            "the SAE is on {} but the model is on {}; load it with the model's device",
            prisma_core::device::device_name(sae_dev),
            prisma_core::device::device_name(model.info.device)
        )));
    }
    Ok(())
}

/// Splices `sae` into every later run of `model` (`NativeModel::splice`).
pub(crate) fn splice_into(model: &Mutex<prisma_core::Model>, sae: &NativeSae, error_term: bool) -> Result<()> {
    let spec = sae.splice_spec(error_term)?;
    crate::torch_thread::run(|| {
        let mut model = lock(model)?;
        check_module_device(&model, &sae.module).map_err(to_js_error)?;
        model.splice(&spec).map_err(to_js_error)
    })
}

/// Where an evaluation is: summing the hook for its mean, then metrics batch by batch.
enum EvalStage {
    Mean(sae::eval::HookMean),
    Metrics(Box<sae::eval::Evaluation>),
}

/// An SAE's evaluation in a model, fed batch by batch from JS (prisma_core::sae::eval).
#[napi]
pub struct NativeSaeEval {
    model: Arc<Mutex<prisma_core::Model>>,
    module: Arc<Mutex<SaeModule>>,
    stage: Arc<Mutex<Option<EvalStage>>>,
}

type Owned = (Vec<i64>, Vec<f32>);

pub struct EvalTask {
    model: Arc<Mutex<prisma_core::Model>>,
    module: Arc<Mutex<SaeModule>>,
    stage: Arc<Mutex<Option<EvalStage>>>,
    pixels: Owned,
    labels: Option<Vec<i64>>,
}

impl Task for EvalTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let model = lock(&self.model)?;
            model.use_threads();
            let module = lock(&self.module)?;
            let mut stage = lock(&self.stage)?;
            let pixels = prisma_core::model::from_f32(&self.pixels.0, &self.pixels.1).map_err(to_js_error)?;
            match stage.as_mut() {
                Some(EvalStage::Mean(mean)) => mean.update(&model, &pixels).map_err(to_js_error),
                Some(EvalStage::Metrics(eval)) => {
                    let labels = self.labels.as_ref().map(|l| tch::Tensor::from_slice(l));
                    eval.update(&model, &module.sae, &pixels, labels.as_ref()).map_err(to_js_error)
                }
                None => Err(to_js_error(PrismaError::Argument("this evaluation has finished".into()))),
            }
        })
    }

    fn resolve(&mut self, _env: Env, _out: Self::Output) -> Result<Self::JsValue> {
        Ok(())
    }
}

#[napi]
impl NativeSaeEval {
    /// Adds a batch: to the hook's mean before `startMetrics`, to the metrics after it.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn update(&self, pixels: Float32Array, shape: Vec<i64>, labels: Option<Vec<i64>>) -> TorchTask<EvalTask> {
        TorchTask(EvalTask {
            model: self.model.clone(),
            module: self.module.clone(),
            stage: self.stage.clone(),
            pixels: (shape, pixels.to_vec()),
            labels,
        })
    }

    /// Ends the mean pass (mean-ablation needs at least one batch there; without, it is left out)
    /// and starts the metrics pass.
    #[napi]
    pub fn start_metrics(&self, env: Env) -> Result<()> {
        sync(&env, || {
            crate::torch_thread::run(|| {
                let model = lock(&self.model)?;
                let module = lock(&self.module)?;
                let mut stage = lock(&self.stage)?;
                let mean = match stage.take() {
                    Some(EvalStage::Mean(m)) => m.finish().ok(),
                    _ => return Err(to_js_error(PrismaError::Argument("the metrics pass has already started".into()))),
                };
                let eval = sae::eval::Evaluation::new(&model, &module.sae, mean).map_err(to_js_error)?;
                *stage = Some(EvalStage::Metrics(Box::new(eval)));
                Ok(())
            })
        })
    }

    /// The report (JSON): reconstruction metrics and, with a head, the downstream ones.
    /// `almost_dead` / `dense`: density thresholds (default 1e-7 and 1e-2).
    #[napi]
    pub fn finish(&self, env: Env, almost_dead: Option<f64>, dense: Option<f64>) -> Result<String> {
        sync(&env, || {
            crate::torch_thread::run(|| {
                let module = lock(&self.module)?;
                let stage = lock(&self.stage)?;
                let Some(EvalStage::Metrics(eval)) = stage.as_ref() else {
                    return Err(to_js_error(PrismaError::Argument("no metrics pass was run".into())));
                };
                let mut opts = sae::metrics::DensityOptions::default();
                if let Some(a) = almost_dead {
                    opts.almost_dead = a;
                }
                if let Some(d) = dense {
                    opts.dense = d;
                }
                let report = eval.finish(&module.sae, &opts).map_err(to_js_error)?;
                serde_json::to_string(&report).map_err(|e| to_js_error(PrismaError::Internal(e.to_string())))
            })
        })
    }
}

impl NativeSaeEval {
    /// An evaluation of `sae` in `model` (`NativeModel::sae_eval`), checked against it.
    pub(crate) fn new(model: &Arc<Mutex<prisma_core::Model>>, sae: &NativeSae) -> Result<NativeSaeEval> {
        crate::torch_thread::run(|| {
            let m = lock(model)?;
            check_module_device(&m, &sae.module).map_err(to_js_error)?;
            let module = lock(&sae.module)?;
            let mean = sae::eval::HookMean::new(&m, &module.sae).map_err(to_js_error)?;
            Ok(NativeSaeEval { model: model.clone(), module: sae.module.clone(), stage: Arc::new(Mutex::new(Some(EvalStage::Mean(mean)))) })
        })
    }
}
