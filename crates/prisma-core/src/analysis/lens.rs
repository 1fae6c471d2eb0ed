//! Logit lens: read each layer's residual stream through the final layer norm and the head, at
//! the pooled token (class token) and at every position.

use super::{check_model, to_vec_f64};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection, Site};
use crate::inference_mode::inference_mode;
use crate::model::Model;
use crate::models::vit::ForwardStart;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The residual streams the lens reads, named on the wire as the site table names them (see
/// `analysis::tests`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
pub enum LensSite {
    ResidPre,
    ResidMid,
    ResidPost,
}

impl LensSite {
    pub fn site(self) -> Site {
        match self {
            LensSite::ResidPre => Site::ResidPre,
            LensSite::ResidMid => Site::ResidMid,
            LensSite::ResidPost => Site::ResidPost,
        }
    }
}

#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(optional_fields)]
pub struct LensOptions {
    /// Target class per image is given separately; this is the default for all images.
    pub target: Option<i64>,
    #[serde(default = "default_sites")]
    #[ts(as = "Option<_>", optional)]
    pub sites: Vec<LensSite>,
    #[serde(default = "default_k")]
    #[ts(as = "Option<_>", optional)]
    pub top_k: usize,
}

fn default_sites() -> Vec<LensSite> {
    vec![LensSite::ResidPost]
}
fn default_k() -> usize {
    5
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
pub struct Ranked {
    pub index: i64,
    pub logit: f64,
    pub prob: f64,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct LensLayer {
    pub layer: usize,
    pub site: LensSite,
    pub hook: String,
    /// At the pooled token (the class token, or the patch mean for mean-pooled models).
    pub top_k: Vec<Ranked>,
    pub target_logit: f64,
    pub target_prob: f64,
    /// 0 = the top class.
    pub target_rank: i64,
    /// Per position (all tokens, class token first).
    pub pos_target_logit: Vec<f64>,
    pub pos_target_prob: Vec<f64>,
    pub pos_target_rank: Vec<i64>,
    pub pos_top1: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct LensImage {
    pub target: i64,
    /// The model's own output, for reference (equals the last layer's resid_post lens).
    pub logits_top_k: Vec<Ranked>,
    pub layers: Vec<LensLayer>,
}

fn ranked(logits: &Tensor, k: usize) -> Result<Vec<Ranked>> {
    let probs = logits.f_softmax(-1, None::<Kind>)?;
    let k = k.min(logits.size()[0] as usize) as i64;
    let (values, indices) = logits.f_topk(k, -1, true, true)?;
    let values = to_vec_f64(&values)?;
    let indices = Vec::<i64>::try_from(&indices).map_err(|e| PrismaError::Internal(e.to_string()))?;
    let p = to_vec_f64(&probs)?;
    Ok(indices.iter().zip(values).map(|(&i, logit)| Ranked { index: i, logit, prob: p[i as usize] }).collect())
}

/// `targets[b]` is image b's target class (defaults to the model's own top-1).
pub fn logit_lens(model: &Model, pixels: &Tensor, targets: &[Option<i64>], opts: &LensOptions) -> Result<Vec<LensImage>> {
    // Its tensors stay inside and the result is host values: inference mode (see inference_mode.rs).
    inference_mode(|| logit_lens_here(model, pixels, targets, opts))
}

fn logit_lens_here(model: &Model, pixels: &Tensor, targets: &[Option<i64>], opts: &LensOptions) -> Result<Vec<LensImage>> {
    check_model(model, "the logit lens")?;
    let cfg = &model.vit.cfg;
    let pixels = model.to_model(pixels)?;
    let mut record = HookSelection::none();
    for l in 0..cfg.n_layers {
        for s in &opts.sites {
            record.insert(HookPoint::block(l, s.site()));
        }
    }
    // No no_grad needed: the caller runs this in inference mode, which implies it.
    let mut ctx = HookCtx::new(&record, &[]);
    let (_, logits) = model.vit.forward(ForwardStart::Pixels(&pixels), None, &mut ctx)?;
    let logits = logits.f_to_kind(Kind::Float)?;
    let batch = logits.size()[0];
    let mut images = Vec::new();
    for b in 0..batch {
        let own = logits.f_get(b)?;
        let target = match targets.get(b as usize).copied().flatten().or(opts.target) {
            Some(t) => t,
            None => own.f_argmax(-1, false)?.int64_value(&[]),
        };
        if target < 0 || target >= cfg.n_classes {
            return Err(PrismaError::Argument(format!("target class {target} is out of range (0..{})", cfg.n_classes - 1)));
        }
        let mut layers = Vec::new();
        for (point, resid) in &ctx.recorded {
            // [pos, d]
            let resid = resid.f_get(b)?;
            // Per position: each token read as if it were the pooled one (final norm, then head). [pos, C]
            let per_pos = model.vit.head_logits(&model.vit.final_layer_norm(&resid)?)?.f_to_kind(Kind::Float)?;
            // Pooled: exactly the model's own read-out from this residual (norm and pooling in its order).
            let none = HookSelection::none();
            let mut quiet = HookCtx::new(&none, &[]);
            let (_, pooled) = model.vit.finalize(&resid.f_unsqueeze(0)?, &mut quiet)?;
            let pooled = pooled.f_get(0)?.f_to_kind(Kind::Float)?;
            let pooled_probs = pooled.f_softmax(-1, None::<Kind>)?;
            let target_logit = pooled.f_get(target)?.double_value(&[]);
            let target_rank = pooled.f_gt(target_logit)?.f_sum(Kind::Int64)?.int64_value(&[]);
            let pos_logit = per_pos.f_select(1, target)?;
            let pos_probs = per_pos.f_softmax(-1, None::<Kind>)?.f_select(1, target)?;
            let pos_rank = per_pos.f_gt_tensor(&pos_logit.f_unsqueeze(1)?)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?;
            let pos_top1 = per_pos.f_argmax(-1, false)?;
            let site = opts
                .sites
                .iter()
                .copied()
                .find(|s| s.site() == point.site)
                .ok_or_else(|| PrismaError::Internal(format!("the lens recorded {point}, which it did not ask for")))?;
            layers.push(LensLayer {
                layer: point.layer.unwrap_or(0),
                site,
                hook: point.to_string(),
                top_k: ranked(&pooled, opts.top_k)?,
                target_logit,
                target_prob: pooled_probs.f_get(target)?.double_value(&[]),
                target_rank,
                pos_target_logit: to_vec_f64(&pos_logit)?,
                pos_target_prob: to_vec_f64(&pos_probs)?,
                pos_target_rank: Vec::<i64>::try_from(&pos_rank).map_err(|e| PrismaError::Internal(e.to_string()))?,
                pos_top1: Vec::<i64>::try_from(&pos_top1).map_err(|e| PrismaError::Internal(e.to_string()))?,
            });
        }
        images.push(LensImage { target, logits_top_k: ranked(&own, opts.top_k)?, layers });
    }
    Ok(images)
}
