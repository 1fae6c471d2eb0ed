//! Ablation sweeps: replace one component at a time (every head, or every layer × position)
//! with zeros, the mean over reference images, or another image's value (resampling), and
//! measure the metric. Same batched engine as patching, with a different source of values.

use super::metric::MetricSpec;
use super::patching::{sweep, CachedSource, PatchBy, PatchOptions, PatchResult, PatchSource, PatchWhat, ZeroSource};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection};
use crate::model::Model;
use crate::models::vit::ForwardStart;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AblationMode {
    Zero,
    Mean,
    Resample,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AblationOptions {
    pub mode: AblationMode,
    #[serde(default = "default_what")]
    pub what: PatchWhat,
    #[serde(default = "default_by")]
    pub by: PatchBy,
    #[serde(flatten)]
    pub metric: MetricSpec,
    /// Which reference image resampling takes its values from.
    #[serde(default)]
    pub resample_index: usize,
    pub chunk: Option<usize>,
    /// As `PatchOptions::fast_linear`.
    #[serde(default)]
    pub fast_linear: bool,
}

fn default_what() -> PatchWhat {
    PatchWhat::HeadZ
}
fn default_by() -> PatchBy {
    PatchBy::LayerHead
}

/// `references` is [N, C, H, W] (needed for mean and resample).
pub fn ablation_sweep(model: &Model, pixels: &Tensor, references: Option<&Tensor>, opts: &AblationOptions) -> Result<PatchResult> {
    let n_layers = model.vit.cfg.n_layers;
    let points: Vec<HookPoint> = (0..n_layers).map(|l| HookPoint::block(l, opts.what.site())).collect();
    let source: Box<dyn PatchSource> = match opts.mode {
        AblationMode::Zero => Box::new(ZeroSource),
        AblationMode::Mean | AblationMode::Resample => {
            let refs = references.ok_or_else(|| PrismaError::Argument(format!("--mode {:?} needs reference images", opts.mode).to_lowercase()))?;
            let refs = model.to_model(refs)?;
            let n = refs.size()[0];
            if n == 0 {
                return Err(PrismaError::Argument("no reference images".into()));
            }
            let mut record = HookSelection::none();
            points.iter().for_each(|p| record.insert(*p));
            let recorded = tch::no_grad(|| -> Result<Vec<(HookPoint, Tensor)>> {
                let mut ctx = HookCtx::new(&record, &[]);
                let _ = model.vit.forward(ForwardStart::Pixels(&refs), None, &mut ctx)?;
                Ok(ctx.recorded)
            })?;
            let reduced = recorded
                .into_iter()
                .map(|(p, t)| {
                    let v = match opts.mode {
                        AblationMode::Mean => t.f_mean_dim([0i64].as_slice(), true, Kind::Float)?.f_to_kind(t.kind())?,
                        _ => {
                            let i = (opts.resample_index as i64) % n;
                            t.f_narrow(0, i, 1)?
                        }
                    };
                    Ok((p, v))
                })
                .collect::<Result<Vec<_>>>()?;
            Box::new(CachedSource(reduced))
        }
    };
    let patch_opts = PatchOptions { what: opts.what, by: opts.by, metric: opts.metric, chunk: opts.chunk, layers: None, fast_linear: opts.fast_linear };
    // "clean" is the unablated image; "corrupt" is unused for ablation and mirrors it.
    sweep(model, pixels, source.as_ref(), &patch_opts, None)
}
