//! Ablation sweeps: replace one component at a time (every head, or every layer × position)
//! with zeros, the mean over reference images, or another image's value (resampling), and
//! measure the metric. Same batched engine as patching, with a different source of values.

use super::metric::MetricSpec;
use super::patching::{recorded_run, sweep, CachedSource, PatchBy, PatchOptions, PatchResult, PatchSource, PatchWhat, ZeroSource};
use crate::error::{PrismaError, Result};
use crate::hooks::HookPoint;
use crate::model::Model;
use crate::models::vit::ForwardPlan;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
pub enum AblationMode {
    Zero,
    Mean,
    Resample,
}

#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(optional_fields)]
pub struct AblationOptions {
    pub mode: AblationMode,
    #[serde(default = "default_what")]
    #[ts(as = "Option<_>", optional)]
    pub what: PatchWhat,
    #[serde(default = "default_by")]
    #[ts(as = "Option<_>", optional)]
    pub by: PatchBy,
    #[serde(flatten)]
    pub metric: MetricSpec,
    /// Which reference image resampling takes its values from.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub resample_index: usize,
    pub chunk: Option<usize>,
    /// As `PatchOptions::fast_linear`.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub fast_linear: bool,
}

fn default_what() -> PatchWhat {
    PatchWhat::HeadZ
}
fn default_by() -> PatchBy {
    PatchBy::LayerHead
}

/// Reference images per forward when their values are averaged: a large reference folder costs
/// this many images' activations at a time, not all of them at once.
const REFERENCE_ROWS: i64 = 16;

/// `references` is [N, C, H, W] (needed for mean and resample).
pub fn ablation_sweep(model: &Model, pixels: &Tensor, references: Option<&Tensor>, opts: &AblationOptions) -> Result<PatchResult> {
    let n_layers = model.vit.cfg.n_layers;
    let points: Vec<HookPoint> = (0..n_layers).map(|l| HookPoint::block(l, opts.what.site())).collect();
    let source: Box<dyn PatchSource> = match opts.mode {
        AblationMode::Zero => Box::new(ZeroSource),
        AblationMode::Mean | AblationMode::Resample => {
            let refs =
                references.ok_or_else(|| PrismaError::Argument(format!("--mode {:?} needs reference images", opts.mode).to_lowercase()))?;
            let refs = model.to_model(refs)?;
            let n = refs.size()[0];
            if n == 0 {
                return Err(PrismaError::Argument("no reference images".into()));
            }
            let values = match opts.mode {
                AblationMode::Mean => reference_mean(model, &refs, &points)?,
                // Only the chosen image is run.
                _ => reference_values(model, &refs.f_narrow(0, (opts.resample_index as i64) % n, 1)?, &points)?,
            };
            Box::new(CachedSource(values))
        }
    };
    let patch_opts =
        PatchOptions { what: opts.what, by: opts.by, metric: opts.metric, chunk: opts.chunk, layers: None, fast_linear: opts.fast_linear };
    // "clean" is the unablated image; "corrupt" is unused for ablation and mirrors it.
    sweep(model, pixels, source.as_ref(), &patch_opts, None)
}

/// The values at `points` of a forward over `pixels`.
fn reference_values(model: &Model, pixels: &Tensor, points: &[HookPoint]) -> Result<Vec<(HookPoint, Tensor)>> {
    Ok(recorded_run(model, pixels, points, ForwardPlan::default())?.1)
}

/// The mean over the reference images of the values at `points` ([1, ...]), run `REFERENCE_ROWS`
/// images at a time and summed in float64.
fn reference_mean(model: &Model, refs: &Tensor, points: &[HookPoint]) -> Result<Vec<(HookPoint, Tensor)>> {
    let n = refs.size()[0];
    let mut sums: Vec<(HookPoint, Tensor)> = Vec::new();
    let mut start = 0;
    while start < n {
        let rows = REFERENCE_ROWS.min(n - start);
        let recorded = reference_values(model, &refs.f_narrow(0, start, rows)?, points)?;
        for (point, t) in recorded {
            let sum = t.f_sum_dim_intlist([0i64].as_slice(), true, Kind::Double)?;
            match sums.iter_mut().find(|(p, _)| *p == point) {
                Some((_, acc)) => *acc = acc.f_add(&sum)?,
                None => sums.push((point, sum)),
            }
        }
        start += rows;
    }
    let kind = model.info.kind;
    sums.into_iter().map(|(p, s)| Ok((p, s.f_div_scalar(n as f64)?.f_to_kind(kind)?))).collect()
}
