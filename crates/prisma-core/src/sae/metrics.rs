//! SAE evaluation over streamed batches: sparsity (L0 per token, at the class token, distinct
//! features per image), reconstruction (explained variance pooled over the dataset as SAELens
//! computes it since PR #443, FVU, MSE, per-token cosine similarity), feature density (dead,
//! almost dead, dense, log10-density histogram), and the downstream quantities from logits
//! (KL(clean ‖ spliced), cross-entropy against labels or the clean prediction, top-1 agreement,
//! and the fraction of CE / KL recovered relative to ablating the hook).
//!
//! Sums are kept in float64 so that a large dataset's totals do not lose the small differences
//! the ratios depend on.

use super::model::Sae;
use crate::error::{PrismaError, Result};
use crate::interventions::InterventionSpec;
use crate::{Model, RunRequest};
use serde::Serialize;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Thresholds of the feature-density counts (saev's defaults).
#[derive(Debug, Clone)]
pub struct DensityOptions {
    /// Fired on fewer than this fraction of tokens (and at least once).
    pub almost_dead: f64,
    /// Fired on more than this fraction of tokens.
    pub dense: f64,
    /// Edges of the log10-density histogram, increasing.
    pub log_density_edges: Vec<f64>,
}

impl Default for DensityOptions {
    fn default() -> Self {
        DensityOptions { almost_dead: 1e-7, dense: 1e-2, log_density_edges: (-8..=0).map(f64::from).collect() }
    }
}

/// Running sums over batches of activations [images, tokens, d_in] and their SAE values.
pub struct ReconstructionMetrics {
    d_sae: i64,
    tokens: i64,
    images: i64,
    l0_sum: f64,
    l1_sum: f64,
    class_l0_sum: f64,
    class_tokens: i64,
    image_l0_sum: f64,
    sse: f64,
    sum_sq: f64,
    sum_x: Option<Tensor>,
    cos_sum: f64,
    fired: Tensor,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconstructionReport {
    pub tokens: i64,
    pub images: i64,
    /// Mean number of active features per token.
    pub l0_per_token: f64,
    /// Mean L0 at the class token (None when no class position was given).
    pub l0_class_token: Option<f64>,
    /// Mean number of distinct features active anywhere in an image.
    pub l0_per_image: f64,
    pub l1_per_token: f64,
    /// 1 - E‖x - x̂‖² / (E‖x‖² - ‖E x‖²), pooled over every token (SAELens since PR #443).
    pub explained_variance: f64,
    /// Fraction of variance unexplained: 1 - explained_variance.
    pub fvu: f64,
    /// E‖x - x̂‖² per token (summed over d_in).
    pub mse: f64,
    /// Mean over tokens of cos(x, x̂).
    pub cosine_similarity: f64,
    /// Per feature: fraction of tokens where it is active.
    pub feature_density: Vec<f64>,
    pub dead: i64,
    pub almost_dead: i64,
    pub dense: i64,
    /// Counts of log10(density) in [edges[i], edges[i+1]); first and last bins open-ended
    /// (below the first edge / at or above the last); dead features are not counted here.
    pub log_density_edges: Vec<f64>,
    pub log_density_counts: Vec<i64>,
}

fn f64_of(t: &Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.double_value(&[]))
}

impl ReconstructionMetrics {
    pub fn new(d_sae: i64) -> Result<Self> {
        Ok(ReconstructionMetrics {
            d_sae,
            tokens: 0,
            images: 0,
            l0_sum: 0.0,
            l1_sum: 0.0,
            class_l0_sum: 0.0,
            class_tokens: 0,
            image_l0_sum: 0.0,
            sse: 0.0,
            sum_sq: 0.0,
            sum_x: None,
            cos_sum: 0.0,
            fired: Tensor::f_zeros([d_sae], (Kind::Double, tch::Device::Cpu))?,
        })
    }

    /// Adds a batch: `x` and `x_hat` [images, tokens, d_in], `acts` [images, tokens, d_sae];
    /// `class_pos` is the class token's index among these tokens, if it is one of them.
    pub fn update(&mut self, x: &Tensor, x_hat: &Tensor, acts: &Tensor, class_pos: Option<i64>) -> Result<()> {
        let (xs, ys, fs) = (x.size(), x_hat.size(), acts.size());
        if xs.len() != 3 || xs != ys || fs.len() != 3 || fs[..2] != xs[..2] || fs[2] != self.d_sae {
            return Err(PrismaError::Shape(format!(
                "metrics take x and x_hat [images, tokens, d_in] and acts [images, tokens, {}]; got {xs:?}, {ys:?}, {fs:?}",
                self.d_sae
            )));
        }
        let x = x.f_to_kind(Kind::Double)?;
        let y = x_hat.f_to_kind(Kind::Double)?;
        let active = acts.f_ne(0.0)?;
        let (b, t) = (xs[0], xs[1]);
        self.images += b;
        self.tokens += b * t;
        self.l0_sum += f64_of(&active.f_sum(Kind::Double)?)?;
        self.l1_sum += f64_of(&acts.f_abs()?.f_sum(Kind::Double)?)?;
        if let Some(c) = class_pos {
            self.class_l0_sum += f64_of(&active.f_select(1, c)?.f_sum(Kind::Double)?)?;
            self.class_tokens += b;
        }
        self.image_l0_sum += f64_of(&active.f_any_dim(1, false)?.f_sum(Kind::Double)?)?;
        self.sse += f64_of(&x.f_sub(&y)?.f_square()?.f_sum(Kind::Double)?)?;
        self.sum_sq += f64_of(&x.f_square()?.f_sum(Kind::Double)?)?;
        let batch_sum = x.f_sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Double)?;
        self.sum_x = Some(match self.sum_x.take() {
            Some(s) => s.f_add(&batch_sum)?,
            None => batch_sum,
        });
        let dot = x.f_mul(&y)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)?;
        let nx = x.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?;
        let ny = y.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?;
        self.cos_sum += f64_of(&dot.f_div(&nx.f_mul(&ny)?)?.f_sum(Kind::Double)?)?;
        let _ = self.fired.f_add_(&active.f_sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Double)?)?;
        Ok(())
    }

    /// Encodes and reconstructs `x` [images, tokens, d_in] with `sae`, then `update`s.
    pub fn update_with(&mut self, sae: &Sae, x: &Tensor, class_pos: Option<i64>) -> Result<()> {
        let acts = sae.encode(x)?;
        let x_hat = sae.reconstruct(x)?;
        self.update(x, &x_hat, &acts, class_pos)
    }

    pub fn finish(&self, opts: &DensityOptions) -> Result<ReconstructionReport> {
        if self.tokens == 0 {
            return Err(PrismaError::Argument("no activations were evaluated".into()));
        }
        let n = self.tokens as f64;
        let mean_x = self.sum_x.as_ref().ok_or_else(|| PrismaError::Internal("no sums".into()))?.f_div_scalar(n)?;
        let variance = self.sum_sq / n - f64_of(&mean_x.f_square()?.f_sum(Kind::Double)?)?;
        let mse = self.sse / n;
        // SAELens's edge cases: no variance means 1 when nothing is lost, else 0.
        let explained_variance = if variance < 1e-10 {
            if mse < 1e-10 {
                1.0
            } else {
                0.0
            }
        } else {
            1.0 - mse / variance
        };
        let density: Vec<f64> = Vec::<f64>::try_from(&self.fired.f_div_scalar(n)?).map_err(|e| PrismaError::Internal(e.to_string()))?;
        let edges = opts.log_density_edges.clone();
        let mut counts = vec![0i64; edges.len() + 1];
        for &d in density.iter().filter(|d| **d > 0.0) {
            let l = d.log10();
            let bin = edges.iter().position(|e| l < *e).unwrap_or(edges.len());
            counts[bin] += 1;
        }
        Ok(ReconstructionReport {
            tokens: self.tokens,
            images: self.images,
            l0_per_token: self.l0_sum / n,
            l0_class_token: (self.class_tokens > 0).then(|| self.class_l0_sum / self.class_tokens as f64),
            l0_per_image: self.image_l0_sum / self.images as f64,
            l1_per_token: self.l1_sum / n,
            explained_variance,
            fvu: 1.0 - explained_variance,
            mse,
            cosine_similarity: self.cos_sum / n,
            dead: density.iter().filter(|d| **d == 0.0).count() as i64,
            almost_dead: density.iter().filter(|d| **d > 0.0 && **d < opts.almost_dead).count() as i64,
            dense: density.iter().filter(|d| **d > opts.dense).count() as i64,
            feature_density: density,
            log_density_edges: edges,
            log_density_counts: counts,
        })
    }
}

/// Running sums of the downstream quantities over batches of logits [images, classes].
#[derive(Default)]
pub struct DownstreamMetrics {
    n: i64,
    ce_clean: f64,
    ce_spliced: f64,
    ce_zero: f64,
    ce_mean: f64,
    kl_spliced: f64,
    kl_zero: f64,
    kl_mean: f64,
    agree: f64,
    correct_clean: f64,
    correct_spliced: f64,
    has_zero: bool,
    has_mean: bool,
    has_labels: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamReport {
    pub images: i64,
    /// "labels" or "clean prediction": what the cross-entropy is against.
    pub ce_target: String,
    pub ce_clean: f64,
    pub ce_spliced: f64,
    pub ce_zero_ablation: Option<f64>,
    pub ce_mean_ablation: Option<f64>,
    /// KL(clean ‖ spliced), mean over images.
    pub kl_spliced: f64,
    pub kl_zero_ablation: Option<f64>,
    pub kl_mean_ablation: Option<f64>,
    /// Fraction of images whose top-1 class is the clean one.
    pub top1_agreement: f64,
    pub accuracy_clean: Option<f64>,
    pub accuracy_spliced: Option<f64>,
    /// (CE_ablation - CE_spliced) / (CE_ablation - CE_clean) (SAELens ce_loss_score).
    pub ce_recovered_zero: Option<f64>,
    pub ce_recovered_mean: Option<f64>,
    /// (KL_ablation - KL_spliced) / KL_ablation (SAELens kl_div_score).
    pub kl_recovered_zero: Option<f64>,
    pub kl_recovered_mean: Option<f64>,
}

/// Per-image cross-entropy of `logits` against `target` and KL(p ‖ softmax(logits)), summed.
fn ce_sum(logits: &Tensor, target: &Tensor) -> Result<f64> {
    let lp = logits.f_to_kind(Kind::Double)?.f_log_softmax(-1, Kind::Double)?;
    f64_of(&lp.f_gather(1, &target.f_unsqueeze(1)?, false)?.f_neg()?.f_sum(Kind::Double)?)
}

fn kl_sum(clean_lp: &Tensor, logits: &Tensor) -> Result<f64> {
    let lp = logits.f_to_kind(Kind::Double)?.f_log_softmax(-1, Kind::Double)?;
    f64_of(&clean_lp.f_exp()?.f_mul(&clean_lp.f_sub(&lp)?)?.f_sum(Kind::Double)?)
}

impl DownstreamMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch of logits [images, classes]: clean, with the SAE spliced, and optionally with
    /// the hook zero- and mean-ablated; `labels` [images] (int64) when the data has them, else the
    /// cross-entropy is against the clean prediction.
    pub fn update(
        &mut self,
        clean: &Tensor,
        spliced: &Tensor,
        zero: Option<&Tensor>,
        mean: Option<&Tensor>,
        labels: Option<&Tensor>,
    ) -> Result<()> {
        let shape = clean.size();
        for t in [Some(spliced), zero, mean].into_iter().flatten() {
            if t.size() != shape || shape.len() != 2 {
                return Err(PrismaError::Shape(format!("logits must all be [images, classes]; got {shape:?} and {:?}", t.size())));
            }
        }
        if self.n > 0 && (self.has_zero != zero.is_some() || self.has_mean != mean.is_some() || self.has_labels != labels.is_some()) {
            return Err(PrismaError::Argument("every batch must give the same logits and labels".into()));
        }
        let clean_pred = clean.f_argmax(-1, false)?;
        let target = match labels {
            Some(l) if l.size() == [shape[0]] => l.f_to_kind(Kind::Int64)?,
            Some(l) => return Err(PrismaError::Shape(format!("labels must be [{}], got {:?}", shape[0], l.size()))),
            None => clean_pred.shallow_clone(),
        };
        let clean_lp = clean.f_to_kind(Kind::Double)?.f_log_softmax(-1, Kind::Double)?;
        self.n += shape[0];
        self.ce_clean += ce_sum(clean, &target)?;
        self.ce_spliced += ce_sum(spliced, &target)?;
        self.kl_spliced += kl_sum(&clean_lp, spliced)?;
        if let Some(z) = zero {
            self.ce_zero += ce_sum(z, &target)?;
            self.kl_zero += kl_sum(&clean_lp, z)?;
        }
        if let Some(m) = mean {
            self.ce_mean += ce_sum(m, &target)?;
            self.kl_mean += kl_sum(&clean_lp, m)?;
        }
        let spliced_pred = spliced.f_argmax(-1, false)?;
        self.agree += f64_of(&spliced_pred.f_eq_tensor(&clean_pred)?.f_sum(Kind::Double)?)?;
        if labels.is_some() {
            self.correct_clean += f64_of(&clean_pred.f_eq_tensor(&target)?.f_sum(Kind::Double)?)?;
            self.correct_spliced += f64_of(&spliced_pred.f_eq_tensor(&target)?.f_sum(Kind::Double)?)?;
        }
        self.has_zero = zero.is_some();
        self.has_mean = mean.is_some();
        self.has_labels = labels.is_some();
        Ok(())
    }

    pub fn finish(&self) -> Result<DownstreamReport> {
        if self.n == 0 {
            return Err(PrismaError::Argument("no logits were evaluated".into()));
        }
        let n = self.n as f64;
        let (ce_clean, ce_spliced, kl_spliced) = (self.ce_clean / n, self.ce_spliced / n, self.kl_spliced / n);
        let ce_zero = self.has_zero.then_some(self.ce_zero / n);
        let ce_mean = self.has_mean.then_some(self.ce_mean / n);
        let kl_zero = self.has_zero.then_some(self.kl_zero / n);
        let kl_mean = self.has_mean.then_some(self.kl_mean / n);
        let ce_rec = |abl: f64| (abl - ce_spliced) / (abl - ce_clean);
        let kl_rec = |abl: f64| (abl - kl_spliced) / abl;
        Ok(DownstreamReport {
            images: self.n,
            ce_target: if self.has_labels { "labels" } else { "clean prediction" }.into(),
            ce_clean,
            ce_spliced,
            ce_zero_ablation: ce_zero,
            ce_mean_ablation: ce_mean,
            kl_spliced,
            kl_zero_ablation: kl_zero,
            kl_mean_ablation: kl_mean,
            top1_agreement: self.agree / n,
            accuracy_clean: self.has_labels.then_some(self.correct_clean / n),
            accuracy_spliced: self.has_labels.then_some(self.correct_spliced / n),
            ce_recovered_zero: ce_zero.map(ce_rec),
            ce_recovered_mean: ce_mean.map(ce_rec),
            kl_recovered_zero: kl_zero.map(kl_rec),
            kl_recovered_mean: kl_mean.map(kl_rec),
        })
    }
}

/// The four logits the downstream metrics compare, from running `model` on `pixels`: clean, with
/// `sae` spliced at its hook over its tokens, with those tokens of the hook zeroed, and (given the
/// hook's mean activation, broadcastable to it) set to the mean.
pub struct DownstreamLogits {
    pub clean: Tensor,
    pub spliced: Tensor,
    pub zero: Tensor,
    pub mean: Option<Tensor>,
}

pub fn downstream_logits(model: &Model, pixels: &Tensor, sae: &Sae, hook_mean: Option<&Tensor>) -> Result<DownstreamLogits> {
    let point = super::check_against_model(sae, model)?;
    let hook = point.to_string();
    let run = |req: RunRequest| -> Result<Tensor> { Ok(model.run(req)?.output) };
    let base = || RunRequest { pixels: Some(pixels.shallow_clone()), ..Default::default() };
    let clean = run(base())?;
    let spec = super::model::splice_spec(sae.to_kind(sae.cfg.kind)?, false)?;
    let spliced = run(RunRequest { splices: vec![spec], ..base() })?;
    let n_pos = model.hook_shape(point, 1).get(1).copied().unwrap_or(1);
    let positions: Option<Vec<i64>> = match sae.cfg.tokens() {
        super::TokenSelection::All => None,
        super::TokenSelection::Cls => Some(vec![0]),
        super::TokenSelection::Patches => Some((model.vit.cfg.n_prefix_tokens()..n_pos).collect()),
    };
    let ablate = |action: &str, tensor: Option<&str>| -> Result<InterventionSpec> {
        let mut spec = serde_json::json!({"hook": hook, "action": action});
        if let Some(p) = &positions {
            spec["select"] = serde_json::json!({ "pos": p });
        }
        if let Some(t) = tensor {
            spec["tensor"] = serde_json::json!(t);
        }
        serde_json::from_value(spec).map_err(|e| PrismaError::Internal(e.to_string()))
    };
    let zero = run(RunRequest { interventions: vec![ablate("zero", None)?], ..base() })?;
    let mean = match hook_mean {
        Some(m) => Some(run(RunRequest {
            interventions: vec![ablate("set", Some("hook_mean"))?],
            tensors: HashMap::from([("hook_mean".to_string(), m.shallow_clone())]),
            ..base()
        })?),
        None => None,
    };
    Ok(DownstreamLogits { clean, spliced, zero, mean })
}
