//! Attribution patching: a first-order estimate of every patch in a sweep from one clean forward
//! and one corrupted forward + backward. estimate = (clean - corrupt) · d metric / d activation,
//! taken at the corrupted run and summed over the axes a patch covers.

use super::patching::{check, reference_run, result_axes, PatchOptions, PatchResult};
use super::to_vec_f64;
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection, Site};
use crate::model::Model;
use crate::models::vit::{ForwardPlan, ForwardStart};
use tch::{Kind, Tensor};

pub fn attribution_patching(model: &Model, clean: &Tensor, corrupt: &Tensor, opts: &PatchOptions) -> Result<PatchResult> {
    let layers = check(model, opts)?;
    let site = opts.what.site();
    let axes = site.axes();
    let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::block(l, site)).collect();
    // Both runs compute the last block for the class token only (the metric reads nothing else)
    // unless a swept value lives after that block's attention, where it would lose its other rows.
    // Gradients to every position still flow through the last block's attention over them.
    let last = model.vit.cfg.n_layers - 1;
    let full_rows_before_attention = matches!(site, Site::ResidPre | Site::Q | Site::K | Site::V);
    let plan = ForwardPlan { last_block_class_token_only: full_rows_before_attention || !layers.contains(&last) };
    let (clean_metric, clean_cache) = reference_run(model, clean, &points, &opts.metric, plan)?;

    // Corrupted forward with a graph that starts at block 0's input (embeddings computed without
    // grad): the backward computes activation gradients only, no weight gradients and nothing
    // through the patch-embedding convolution.
    let pixels = model.to_model(corrupt)?;
    let none = HookSelection::none();
    let embedded = tch::no_grad(|| -> Result<Tensor> {
        let mut ctx = HookCtx::new(&none, &[]);
        Ok(model.vit.forward(ForwardStart::Pixels(&pixels), Some(0), &mut ctx)?.1)
    })?;
    let resid0 = embedded.f_detach()?.f_set_requires_grad(true)?;
    let record: HookSelection = points.iter().copied().collect();
    let mut ctx = HookCtx::new(&record, &[]);
    let (_, logits) = model.vit.forward_planned(ForwardStart::Resid { layer: 0, resid: &resid0 }, None, plan, &mut ctx)?;
    let corrupt_metric =
        opts.metric.values(&logits.f_detach()?)?.into_iter().next().ok_or_else(|| PrismaError::Internal("empty batch".into()))?;
    let metric = opts.metric.tensor(&logits)?.f_sum(None::<Kind>)?;
    let acts: Vec<Tensor> = ctx.recorded.iter().map(|(_, t)| t.shallow_clone()).collect();
    let grads = Tensor::f_run_backward(&[&metric], &acts, false, false)?;

    let (axis_names, dims) = result_axes(model, opts.by, layers.len());
    // The activation axes each estimate keeps (the rest are summed over), in result order.
    let mut keep: Vec<i64> = Vec::new();
    if opts.by.uses_pos() {
        keep.push(axes.pos.unwrap_or(1) as i64);
    }
    if opts.by.uses_head() {
        keep.push(axes.head.unwrap_or(2) as i64);
    }
    let mut value = Vec::new();
    for ((point, corrupt_act), grad) in ctx.recorded.iter().zip(&grads) {
        let clean_act = clean_cache
            .iter()
            .find(|(p, _)| p == point)
            .map(|(_, t)| t)
            .ok_or_else(|| PrismaError::Internal(format!("no clean value at {point}")))?;
        let contrib = clean_act.f_sub(&corrupt_act.f_detach()?)?.f_mul(grad)?.f_to_kind(Kind::Double)?;
        let rank = contrib.dim() as i64;
        let sum_over: Vec<i64> = (0..rank).filter(|a| !keep.contains(a)).collect();
        let mut reduced = contrib.f_sum_dim_intlist(sum_over.as_slice(), true, None::<Kind>)?;
        // Order kept axes as (pos, head) even where the site stores head first (pattern).
        if keep.len() == 2 && keep[0] > keep[1] {
            reduced = reduced.f_transpose(keep[0], keep[1])?;
        }
        value.extend(to_vec_f64(&reduced)?);
    }
    // Estimated metric after the patch = corrupted metric + estimated change.
    let value: Vec<f64> = value.into_iter().map(|d| corrupt_metric.value + d).collect();
    Ok(PatchResult::of_runs(opts, axis_names, dims, layers, clean_metric, corrupt_metric, value, Vec::new(), 2))
}

/// Pearson correlation, used to report how well the estimate tracks exact patching.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa.sqrt() * sbb.sqrt())
}
