//! The family-agnostic handle the binding and tests use: load a folder, list hooks, run.

use crate::device::{device_name, dtype_name, parse_device, parse_dtype};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection};
use crate::interventions::{parse_specs, Intervention, InterventionSpec};
use crate::models::vit::{ForwardStart, HookedViT};
use crate::weights::{hf, store::TensorStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub family: String,
    pub architecture: String,
    pub source_format: String,
    pub model_dir: PathBuf,
    pub config_json: String,
    pub n_params: i64,
    pub labels: Vec<String>,
    pub unexpected_tensors: Vec<String>,
    pub device: Device,
    pub kind: Kind,
}

pub struct Model {
    pub info: ModelInfo,
    pub vit: HookedViT,
}

/// One forward request. `pixels` is [B, C, H, W] float32 on the CPU; it is moved to the model.
#[derive(Default)]
pub struct RunRequest {
    pub pixels: Option<Tensor>,
    pub cache: Vec<String>,
    pub stop_at_layer: Option<usize>,
    pub start_at_layer: Option<usize>,
    pub start_resid: Option<Tensor>,
    pub interventions: Vec<InterventionSpec>,
    pub tensors: HashMap<String, Tensor>,
}

pub struct RunOutput {
    pub output_name: HookPoint,
    pub output: Tensor,
    pub cache: Vec<(HookPoint, Tensor)>,
}

impl Model {
    pub fn load(dir: &Path, device: &str, dtype: &str) -> Result<Model> {
        let device = parse_device(device)?;
        let kind = parse_dtype(dtype)?;
        if !dir.is_dir() {
            return Err(PrismaError::ModelDir { path: dir.into(), reason: "not a directory".into() });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(PrismaError::ModelDir {
                path: dir.into(),
                reason: "no config.json here (expected a Hugging Face model folder)".into(),
            });
        }
        let config_json = std::fs::read_to_string(&config_path)
            .map_err(|e| PrismaError::Io { path: config_path.clone(), reason: e.to_string() })?;
        let (model_type, architecture) = hf::sniff(&config_path, &config_json)?;
        if !hf::accepts(&model_type, &architecture) {
            let found = if architecture.is_empty() { format!("model_type '{model_type}'") } else { architecture.clone() };
            return Err(PrismaError::UnsupportedModel { path: dir.into(), found, supported: hf::supported() });
        }
        let mut store = TensorStore::open_dir(dir, kind, device)?;
        let loaded = hf::load(dir, &config_json, &mut store)?;
        let info = ModelInfo {
            family: "vit".into(),
            architecture: loaded.cfg.architecture.clone(),
            source_format: "hf".into(),
            model_dir: dir.into(),
            config_json,
            n_params: loaded.n_params,
            labels: loaded.labels,
            unexpected_tensors: loaded.unexpected,
            device,
            kind,
        };
        Ok(Model { info, vit: HookedViT { cfg: loaded.cfg, weights: loaded.weights } })
    }

    /// Intra-op threads for work on this model: one for tiny models, where thread synchronisation
    /// costs more than it saves (measured: a vit-tiny patch sweep runs 2x faster on one thread),
    /// else libtorch's default. libtorch's setting is process-wide, so callers set it per call.
    pub fn use_threads(&self) {
        static DEFAULT: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        let default = *DEFAULT.get_or_init(tch::get_num_threads);
        let c = &self.vit.cfg;
        let flops_per_layer = c.n_pos() * c.d_model * (4 * c.d_model + 2 * c.d_mlp);
        let threads = if flops_per_layer < 10_000_000 { 1 } else { default };
        if tch::get_num_threads() != threads {
            tch::set_num_threads(threads);
        }
    }

    pub fn device_name(&self) -> String {
        device_name(self.info.device)
    }
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.info.kind)
    }

    pub fn hook_points(&self) -> Vec<HookPoint> {
        self.vit.hook_points()
    }

    pub fn hook_shape(&self, point: HookPoint, batch: i64) -> Vec<i64> {
        self.vit.hook_shape(point, batch)
    }

    pub fn resolve_hooks(&self, patterns: &[String]) -> Result<HookSelection> {
        HookSelection::resolve(patterns, &self.hook_points(), self.vit.cfg.n_layers)
    }

    pub fn parse_interventions(json: &str) -> Result<Vec<InterventionSpec>> {
        parse_specs(json)
    }

    fn to_model(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.f_to_device(self.info.device)?.f_to_kind(self.info.kind)?)
    }

    pub fn run(&self, req: RunRequest) -> Result<RunOutput> {
        let n_layers = self.vit.cfg.n_layers;
        let record = self.resolve_hooks(&req.cache)?;
        let available = self.hook_points();
        let tensors: HashMap<String, Tensor> =
            req.tensors.iter().map(|(k, t)| Ok((k.clone(), self.to_model(t)?))).collect::<Result<_>>()?;
        let mut interventions = Vec::with_capacity(req.interventions.len());
        for spec in &req.interventions {
            let point = HookPoint::parse(&spec.hook)?;
            if let Some(l) = point.layer {
                if l >= n_layers {
                    return Err(PrismaError::LayerRange(format!(
                        "intervention at '{}': layer {l} is out of range (the model has {n_layers} layers)",
                        spec.hook
                    )));
                }
            }
            if !available.contains(&point) {
                return Err(PrismaError::UnknownHook(format!("this model has no hook '{}'", spec.hook)));
            }
            interventions.push(Intervention::compile(spec, point, &tensors)?);
        }
        if let Some(stop) = req.stop_at_layer {
            if stop > n_layers {
                return Err(PrismaError::LayerRange(format!("stop-at-layer {stop} is out of range (0..={n_layers})")));
            }
        }
        let mut ctx = HookCtx::new(&record, &interventions);
        let (output_name, output) = tch::no_grad(|| -> Result<(HookPoint, Tensor)> {
            match (req.start_at_layer, &req.start_resid) {
                (Some(layer), Some(resid)) => {
                    if layer > n_layers {
                        return Err(PrismaError::LayerRange(format!("start-at-layer {layer} is out of range (0..={n_layers})")));
                    }
                    if let Some(stop) = req.stop_at_layer {
                        if stop < layer {
                            return Err(PrismaError::LayerRange(format!("stop-at-layer {stop} comes before start-at-layer {layer}")));
                        }
                    }
                    let c = &self.vit.cfg;
                    let size = resid.size();
                    if size.len() != 3 || size[1] != c.n_pos() || size[2] != c.d_model {
                        return Err(PrismaError::Shape(format!(
                            "start residual has shape {size:?}, expected [batch, {}, {}]",
                            c.n_pos(),
                            c.d_model
                        )));
                    }
                    let resid = self.to_model(resid)?;
                    self.vit.forward(ForwardStart::Resid { layer, resid: &resid }, req.stop_at_layer, &mut ctx)
                }
                (Some(_), None) => Err(PrismaError::Shape("start-at-layer needs a start residual".into())),
                (None, _) => {
                    let pixels = req.pixels.as_ref().ok_or_else(|| PrismaError::Shape("no pixels given".into()))?;
                    let pixels = self.to_model(pixels)?;
                    self.vit.forward(ForwardStart::Pixels(&pixels), req.stop_at_layer, &mut ctx)
                }
            }
        })?;
        Ok(RunOutput { output_name, output, cache: ctx.recorded })
    }
}

/// Copies a tensor to a CPU float32 Vec, plus its shape.
pub fn to_f32_vec(t: &Tensor) -> Result<(Vec<i64>, Vec<f32>)> {
    let shape = t.size();
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_reshape([-1i64].as_slice())?;
    let values = Vec::<f32>::try_from(&flat).map_err(|e| PrismaError::Internal(format!("copying tensor: {e}")))?;
    Ok((shape, values))
}

pub fn from_f32(shape: &[i64], data: &[f32]) -> Result<Tensor> {
    let expected: i64 = shape.iter().product();
    if expected as usize != data.len() {
        return Err(PrismaError::Shape(format!("shape {shape:?} needs {expected} values, got {}", data.len())));
    }
    Ok(Tensor::from_slice(data).f_reshape(shape)?)
}
