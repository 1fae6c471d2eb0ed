//! An SAE's evaluation as one streamed pass over image batches (constant memory: only running
//! sums are kept): the hook's mean first (`HookMean`, for mean-ablation), then per batch the
//! reconstruction metrics at the SAE's tokens and the downstream quantities from the model's own
//! head (`Evaluation`).

use super::metrics::{downstream_logits, DensityOptions, DownstreamMetrics, DownstreamReport, ReconstructionMetrics, ReconstructionReport};
use super::{check_against_model, Sae, TokenSelection};
use crate::error::{PrismaError, Result};
use crate::hooks::point::HookPoint;
use crate::{Model, RunRequest};
use serde::Serialize;
use tch::{Kind, Tensor};

/// The SAE's hook value on `pixels` [batch, pos, d] (float32, on the model's device).
fn hook_value(model: &Model, point: HookPoint, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
    let out = model.run(RunRequest { pixels: Some(pixels.shallow_clone()), cache: vec![point.to_string()], ..Default::default() })?;
    let (_, x) = out.cache.into_iter().next().ok_or_else(|| PrismaError::Internal(format!("'{point}' was not recorded")))?;
    Ok((x, out.output))
}

/// Running sum of the hook's value over images, for mean-ablation.
pub struct HookMean {
    point: HookPoint,
    sum: Option<Tensor>,
    images: i64,
}

impl HookMean {
    pub fn new(model: &Model, sae: &Sae) -> Result<HookMean> {
        Ok(HookMean { point: check_against_model(sae, model)?, sum: None, images: 0 })
    }

    pub fn update(&mut self, model: &Model, pixels: &Tensor) -> Result<()> {
        let (x, _) = tch::no_grad(|| hook_value(model, self.point, pixels))?;
        let s = x.f_to_kind(Kind::Double)?.f_sum_dim_intlist([0i64].as_slice(), true, Kind::Double)?;
        self.images += x.size()[0];
        self.sum = Some(match self.sum.take() {
            Some(prev) => prev.f_add(&s)?,
            None => s,
        });
        Ok(())
    }

    /// The mean [1, pos, d], in float32.
    pub fn finish(&self) -> Result<Tensor> {
        let sum = self.sum.as_ref().ok_or_else(|| PrismaError::Argument("no images were given for the hook's mean".into()))?;
        Ok(sum.f_div_scalar(self.images as f64)?.f_to_kind(Kind::Float)?)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub hook: String,
    /// The tokens the metrics are over (those the SAE was trained on).
    pub tokens: String,
    pub reconstruction: ReconstructionReport,
    /// None for a model without a head (no logits to compare).
    pub downstream: Option<DownstreamReport>,
}

/// Reconstruction and downstream metrics of `sae` in `model`, batch by batch.
pub struct Evaluation {
    point: HookPoint,
    recon: ReconstructionMetrics,
    down: Option<DownstreamMetrics>,
    hook_mean: Option<Tensor>,
    /// The running sums live on the CPU: an SAE on another device is copied for them.
    cpu_sae: Option<Sae>,
}

impl Evaluation {
    /// `hook_mean` [1, pos, d] (from `HookMean`) adds mean-ablation; downstream metrics need a head.
    pub fn new(model: &Model, sae: &Sae, hook_mean: Option<Tensor>) -> Result<Evaluation> {
        let point = check_against_model(sae, model)?;
        let down = model.vit.weights.has_head().then(DownstreamMetrics::new);
        let cpu_sae = if sae.device() == tch::Device::Cpu { None } else { Some(sae.to_device(tch::Device::Cpu)?) };
        Ok(Evaluation { point, recon: ReconstructionMetrics::new(sae.d_sae())?, down, hook_mean, cpu_sae })
    }

    /// Adds a batch of `pixels`; `labels` [batch] (int64) when the data has them.
    pub fn update(&mut self, model: &Model, sae: &Sae, pixels: &Tensor, labels: Option<&Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let (x, _) = hook_value(model, self.point, pixels)?;
            let n_pos = x.size()[1];
            let prefix = model.vit.cfg.n_prefix_tokens();
            let (x, class_pos) = match sae.cfg.tokens() {
                TokenSelection::All => (x, model.vit.cfg.has_class_token.then_some(0)),
                TokenSelection::Cls => (x.f_narrow(1, 0, 1)?, Some(0)),
                TokenSelection::Patches => (x.f_narrow(1, prefix, n_pos - prefix)?, None),
            };
            let x = x.f_to_device(tch::Device::Cpu)?;
            self.recon.update_with(self.cpu_sae.as_ref().unwrap_or(sae), &x, class_pos)?;
            if let Some(down) = &mut self.down {
                let l = downstream_logits(model, pixels, sae, self.hook_mean.as_ref())?;
                down.update(&l.clean, &l.spliced, Some(&l.zero), l.mean.as_ref(), labels)?;
            }
            Ok(())
        })
    }

    pub fn finish(&self, sae: &Sae, opts: &DensityOptions) -> Result<EvalReport> {
        Ok(EvalReport {
            hook: self.point.to_string(),
            tokens: sae.cfg.tokens().name().into(),
            reconstruction: self.recon.finish(opts)?,
            downstream: self.down.as_ref().map(DownstreamMetrics::finish).transpose()?,
        })
    }
}
