//! Analysis entry points: one TorchTask that runs a technique in the core and hands back its
//! result as JSON (the TypeScript layer owns the typed interfaces).

use crate::convert::{guard, lock, to_js_error};
use crate::torch_thread::TorchTask;
use crate::NativeModel;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::analysis::{ablation, attribution, dla, lens, patching};
use prisma_core::model::from_f32;
use prisma_core::{Model, PrismaError};
use std::sync::{Arc, Mutex};

type Owned = (Vec<i64>, Vec<f32>);

pub enum Analysis {
    LogitLens { pixels: Owned, targets: Vec<Option<i64>> },
    Patch { clean: Owned, corrupt: Owned, attribution: bool },
    Dla { pixels: Owned },
    Ablate { pixels: Owned, references: Option<Owned> },
}

pub struct AnalysisTask {
    model: Arc<Mutex<Model>>,
    analysis: Analysis,
    options: String,
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| to_js_error(PrismaError::Argument(format!("bad analysis options: {e}"))))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| to_js_error(PrismaError::Internal(e.to_string())))
}

impl Task for AnalysisTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        guard(|| {
            let model = lock(&self.model)?;
            model.use_threads();
            let t = |(shape, data): &Owned| from_f32(shape, data).map_err(to_js_error);
            let e = to_js_error;
            match &self.analysis {
                Analysis::LogitLens { pixels, targets } => {
                    let opts: lens::LensOptions = parse(&self.options)?;
                    json(&lens::logit_lens(&model, &t(pixels)?, targets, &opts).map_err(e)?)
                }
                Analysis::Patch { clean, corrupt, attribution: false } => {
                    let opts: patching::PatchOptions = parse(&self.options)?;
                    json(&patching::activation_patching(&model, &t(clean)?, &t(corrupt)?, &opts).map_err(e)?)
                }
                Analysis::Patch { clean, corrupt, attribution: true } => {
                    let opts: patching::PatchOptions = parse(&self.options)?;
                    json(&attribution::attribution_patching(&model, &t(clean)?, &t(corrupt)?, &opts).map_err(e)?)
                }
                Analysis::Dla { pixels } => {
                    let opts: dla::DlaOptions = parse(&self.options)?;
                    json(&dla::direct_logit_attribution(&model, &t(pixels)?, &opts).map_err(e)?)
                }
                Analysis::Ablate { pixels, references } => {
                    let opts: ablation::AblationOptions = parse(&self.options)?;
                    let refs = references.as_ref().map(t).transpose()?;
                    json(&ablation::ablation_sweep(&model, &t(pixels)?, refs.as_ref(), &opts).map_err(e)?)
                }
            }
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

#[napi]
impl NativeModel {
    /// Logit lens over a batch. `optionsJson`: LensOptions; `targets[b]` < 0 means that image's
    /// own top-1 class. Resolves to LensImage[] as JSON (src/generated/contract/).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn logit_lens(
        &self,
        pixels: Float32Array,
        shape: Vec<i64>,
        options_json: String,
        targets: Option<Vec<i64>>,
    ) -> TorchTask<AnalysisTask> {
        let targets = targets.unwrap_or_default().into_iter().map(|t| (t >= 0).then_some(t)).collect();
        self.analysis(Analysis::LogitLens { pixels: (shape, pixels.to_vec()), targets }, options_json)
    }

    /// Activation patching of one clean image into one corrupted image (each [1, C, H, W]),
    /// exact or by attribution (a gradient estimate). `optionsJson`: PatchOptions. Resolves to
    /// PatchResult as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn patch(
        &self,
        clean: Float32Array,
        corrupt: Float32Array,
        shape: Vec<i64>,
        options_json: String,
        attribution: Option<bool>,
    ) -> TorchTask<AnalysisTask> {
        self.analysis(
            Analysis::Patch {
                clean: (shape.clone(), clean.to_vec()),
                corrupt: (shape, corrupt.to_vec()),
                attribution: attribution.unwrap_or(false),
            },
            options_json,
        )
    }

    /// Direct logit attribution for one image. `optionsJson`: DlaOptions. Resolves to DlaResult as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn dla(&self, pixels: Float32Array, shape: Vec<i64>, options_json: String) -> TorchTask<AnalysisTask> {
        self.analysis(Analysis::Dla { pixels: (shape, pixels.to_vec()) }, options_json)
    }

    /// Ablation sweep for one image; `references` [N, C, H, W] for mean and resample (averaged 16
    /// at a time). `optionsJson`: AblationOptions. Resolves to PatchResult as JSON (clean = the
    /// unablated metric).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn ablate(
        &self,
        pixels: Float32Array,
        shape: Vec<i64>,
        options_json: String,
        references: Option<Float32Array>,
        reference_shape: Option<Vec<i64>>,
    ) -> TorchTask<AnalysisTask> {
        let references = match (references, reference_shape) {
            (Some(r), Some(s)) => Some((s, r.to_vec())),
            _ => None,
        };
        self.analysis(Analysis::Ablate { pixels: (shape, pixels.to_vec()), references }, options_json)
    }

    fn analysis(&self, analysis: Analysis, options: String) -> TorchTask<AnalysisTask> {
        TorchTask(AnalysisTask { model: self.inner.clone(), analysis, options })
    }
}
