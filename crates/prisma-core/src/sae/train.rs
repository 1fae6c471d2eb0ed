//! Training SAEs on a stream of activation batches, step for step as SAELens 6.x's `SAETrainer`
//! trains them: the architecture's `training_forward_pass` (MSE summed over d_in, plus L1 on
//! f·‖W_dec‖, AuxK over dead features, the JumpReLU step-function L0 with its straight-through
//! threshold gradient, or the gated L1 + auxiliary reconstruction), backward, global gradient
//! clipping at 1.0, Adam, the LR schedule (linear warm-up, constant or cosine to `lr_end`, linear
//! decay) and the L1/L0 coefficient warm-up. BatchTopK keeps SAELens's EMA threshold and is saved
//! as JumpReLU; TopK trained with decoder-norm rescaling is saved with the norms folded.
//!
//! Optional beyond SAELens: unit-norm decoder rows with the gradient's parallel component removed
//! (ViT-Prisma, saev), `b_dec` initialised at the geometric median or mean of the first batch.
//!
//! Determinism: weights are drawn from libtorch's generator seeded with `seed`; the shuffle
//! buffer uses its own counter-based generator whose state is checkpointed with everything else
//! (weights, Adam moments, step, dead-feature counters, BatchTopK threshold, scaling factor, the
//! buffer's contents and the source position), so a resumed run continues with identical weights.

use super::config::{Architecture, Normalization, SaeConfig, TokenSelection};
use super::model::Sae;
use crate::error::{PrismaError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use tch::{Device, Kind, Tensor};

/// What to train. Field names follow SAELens's where it has one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ts_rs::TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaeTrainConfig {
    /// standard (ReLU + L1), topk, batchtopk, jumprelu, gated.
    pub architecture: String,
    pub d_in: i64,
    /// Number of features; or `expansion_factor` × d_in.
    #[serde(default)]
    #[ts(optional)]
    pub d_sae: Option<i64>,
    #[serde(default)]
    #[ts(optional)]
    pub expansion_factor: Option<i64>,
    /// TopK: features per token; BatchTopK: per token on average over the batch.
    #[serde(default)]
    #[ts(optional)]
    pub k: Option<f64>,
    #[serde(default = "one")]
    #[ts(as = "Option<_>", optional)]
    pub l1_coefficient: f64,
    #[serde(default = "one")]
    #[ts(as = "Option<_>", optional)]
    pub lp_norm: f64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub l1_warm_up_steps: i64,
    #[serde(default = "one")]
    #[ts(as = "Option<_>", optional)]
    pub l0_coefficient: f64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub l0_warm_up_steps: i64,
    #[serde(default = "bandwidth")]
    #[ts(as = "Option<_>", optional)]
    pub jumprelu_bandwidth: f64,
    #[serde(default = "init_threshold")]
    #[ts(as = "Option<_>", optional)]
    pub jumprelu_init_threshold: f64,
    #[serde(default = "one")]
    #[ts(as = "Option<_>", optional)]
    pub aux_loss_coefficient: f64,
    /// TopK/BatchTopK: rank pre-activations scaled by the decoder norms (SAELens default true).
    #[serde(default = "yes")]
    #[ts(as = "Option<_>", optional)]
    pub rescale_acts_by_decoder_norm: bool,
    #[serde(default = "topk_threshold_lr")]
    #[ts(as = "Option<_>", optional)]
    pub topk_threshold_lr: f64,
    /// none, expected_average_only_in, constant_norm_rescale, layer_norm.
    #[serde(default = "none")]
    #[ts(as = "Option<_>", optional)]
    pub normalize_activations: String,
    #[serde(default = "yes")]
    #[ts(as = "Option<_>", optional)]
    pub apply_b_dec_to_input: bool,
    /// Decoder rows start at this norm (SAELens's 0.1 heuristic); None keeps Kaiming's.
    #[serde(default = "decoder_init_norm")]
    #[ts(optional)]
    pub decoder_init_norm: Option<f64>,
    /// zeros (SAELens), mean, or geometric_median (ViT-Prisma), from the first batch.
    #[serde(default = "zeros")]
    #[ts(as = "Option<_>", optional)]
    pub b_dec_init: String,
    /// Keep decoder rows at unit norm, removing the gradient's parallel component.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub unit_norm_decoder: bool,
    /// TopK/BatchTopK: compute with dense products and autograd instead of the sparse step
    /// (same numbers; the sparse step is faster when k is much smaller than d_sae).
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub dense_products: bool,
    pub lr: f64,
    #[serde(default = "beta1")]
    #[ts(as = "Option<_>", optional)]
    pub adam_beta1: f64,
    #[serde(default = "beta2")]
    #[ts(as = "Option<_>", optional)]
    pub adam_beta2: f64,
    /// constant or cosineannealing.
    #[serde(default = "constant")]
    #[ts(as = "Option<_>", optional)]
    pub lr_scheduler: String,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub lr_warm_up_steps: i64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub lr_decay_steps: i64,
    /// Defaults to lr / 10, as in SAELens.
    #[serde(default)]
    #[ts(optional)]
    pub lr_end: Option<f64>,
    pub total_steps: i64,
    /// A feature is dead when it has not fired for this many steps.
    #[serde(default = "dead_window")]
    #[ts(as = "Option<_>", optional)]
    pub dead_feature_window: i64,
    /// Standard (ReLU) SAEs: every this many steps, re-initialise dead features from inputs the
    /// SAE reconstructs worst (Anthropic's resampling); 0 turns it off.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub resample_every: i64,
    /// Batches used to estimate the expected_average_only_in factor.
    #[serde(default = "norm_batches")]
    #[ts(as = "Option<_>", optional)]
    pub n_batches_for_norm_estimate: i64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub seed: i64,
    /// Recorded in the saved SAE's metadata.
    #[serde(default)]
    #[ts(optional)]
    pub hook_name: Option<String>,
    #[serde(default)]
    #[ts(optional)]
    pub tokens: Option<String>,
    #[serde(default)]
    #[ts(optional)]
    pub model_name: Option<String>,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn bandwidth() -> f64 {
    0.05
}
fn init_threshold() -> f64 {
    0.01
}
fn topk_threshold_lr() -> f64 {
    0.01
}
fn none() -> String {
    "none".into()
}
fn constant() -> String {
    "constant".into()
}
fn zeros() -> String {
    "zeros".into()
}
fn decoder_init_norm() -> Option<f64> {
    Some(0.1)
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn dead_window() -> i64 {
    1000
}
fn norm_batches() -> i64 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainArch {
    Standard,
    TopK,
    BatchTopK,
    JumpRelu,
    Gated,
}

impl SaeTrainConfig {
    pub fn arch(&self) -> Result<TrainArch> {
        Ok(match self.architecture.as_str() {
            "standard" | "relu" => TrainArch::Standard,
            "topk" => TrainArch::TopK,
            "batchtopk" => TrainArch::BatchTopK,
            "jumprelu" => TrainArch::JumpRelu,
            "gated" => TrainArch::Gated,
            other => {
                return Err(PrismaError::Argument(format!(
                    "unknown SAE architecture '{other}' (standard, topk, batchtopk, jumprelu, gated)"
                )))
            }
        })
    }

    pub fn d_sae(&self) -> Result<i64> {
        match (self.d_sae, self.expansion_factor) {
            (Some(d), _) if d > 0 => Ok(d),
            (None, Some(e)) if e > 0 => Ok(e * self.d_in),
            _ => Err(PrismaError::Argument("give d_sae or expansion_factor (a positive integer)".into())),
        }
    }

    fn normalization(&self) -> Result<Normalization> {
        Ok(match self.normalize_activations.as_str() {
            "none" => Normalization::None,
            "expected_average_only_in" => Normalization::ExpectedAverageOnlyIn,
            "constant_norm_rescale" => Normalization::ConstantNormRescale,
            "layer_norm" => Normalization::LayerNorm,
            other => return Err(PrismaError::Argument(format!("unknown normalize_activations '{other}'"))),
        })
    }

    /// Checks the combination once, with one message per mistake.
    pub fn validate(&self) -> Result<()> {
        let arch = self.arch()?;
        let d_sae = self.d_sae()?;
        if self.d_in < 1 {
            return Err(PrismaError::Argument("d_in must be positive".into()));
        }
        if matches!(arch, TrainArch::TopK | TrainArch::BatchTopK) {
            let k = self.k.ok_or_else(|| PrismaError::Argument(format!("{} needs k", self.architecture)))?;
            if !(k > 0.0 && k <= d_sae as f64) {
                return Err(PrismaError::Argument(format!("k must be in 1..={d_sae}, got {k}")));
            }
            if matches!(self.normalization()?, Normalization::LayerNorm | Normalization::ConstantNormRescale) {
                return Err(PrismaError::Argument(
                    "TopK's AuxK loss does not support layer_norm or constant_norm_rescale (as in SAELens)".into(),
                ));
            }
        }
        if !self.lr.is_finite() || self.lr <= 0.0 || self.total_steps < 1 {
            return Err(PrismaError::Argument("lr must be positive and total_steps at least 1".into()));
        }
        if !["constant", "cosineannealing"].contains(&self.lr_scheduler.as_str()) {
            return Err(PrismaError::Argument(format!("unknown lr_scheduler '{}' (constant, cosineannealing)", self.lr_scheduler)));
        }
        if !["zeros", "mean", "geometric_median"].contains(&self.b_dec_init.as_str()) {
            return Err(PrismaError::Argument(format!("unknown b_dec_init '{}' (zeros, mean, geometric_median)", self.b_dec_init)));
        }
        if self.lr_decay_steps > 0 && self.lr_end() == 0.0 {
            return Err(PrismaError::Argument("lr_decay_steps needs a non-zero lr_end".into()));
        }
        if let Some(t) = &self.tokens {
            TokenSelection::parse(t)?;
        }
        if self.resample_every < 0 || (self.resample_every > 0 && arch != TrainArch::Standard) {
            return Err(PrismaError::Argument("resample_every is for standard (ReLU) SAEs, and must be >= 0".into()));
        }
        Ok(())
    }

    fn lr_end(&self) -> f64 {
        self.lr_end.unwrap_or(self.lr / 10.0)
    }

    /// The learning rate at `step` (0-based), as SAELens's `get_lr_scheduler` sets it.
    pub fn lr_at(&self, step: i64) -> f64 {
        let (lr, w, d, t) = (self.lr, self.lr_warm_up_steps, self.lr_decay_steps, self.total_steps);
        if w > 0 && step < w {
            // LinearLR(start 1/w, end 1, total_iters w-1).
            let start = 1.0 / w as f64;
            let frac = if w > 1 { (step as f64 / (w - 1) as f64).min(1.0) } else { 1.0 };
            return lr * (start + (1.0 - start) * frac);
        }
        let main_steps = t - w - d;
        if d > 0 && step >= t - d {
            let lr_end = if self.lr_scheduler == "constant" { lr } else { self.lr_end() };
            let start = lr_end / lr;
            let s = ((step - (t - d)) as f64 / d as f64).min(1.0);
            return lr * (start + (0.0 - start) * s);
        }
        match self.lr_scheduler.as_str() {
            "cosineannealing" => {
                let s = (step - w) as f64;
                let t_max = main_steps.max(1) as f64;
                let eta = self.lr_end();
                eta + (lr - eta) * (1.0 + (std::f64::consts::PI * s / t_max).cos()) / 2.0
            }
            _ => lr,
        }
    }

    /// The sparsity coefficient at `step`: linear warm-up from 0 (SAELens `CoefficientScheduler`).
    pub fn coefficient_at(&self, step: i64) -> f64 {
        let (value, warm) = match self.arch() {
            Ok(TrainArch::JumpRelu) => (self.l0_coefficient, self.l0_warm_up_steps),
            _ => (self.l1_coefficient, self.l1_warm_up_steps),
        };
        if warm > 0 && step < warm {
            value * step as f64 / warm as f64
        } else {
            value
        }
    }
}

/// One step's numbers, for the dashboard and the training log.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct StepMetrics {
    pub step: i64,
    pub tokens: i64,
    pub loss: f64,
    pub mse_loss: f64,
    /// L1 (standard, gated), L0 (jumprelu) or 0.
    pub sparsity_loss: f64,
    /// AuxK (topk, batchtopk), auxiliary reconstruction (gated) or 0.
    pub aux_loss: f64,
    /// Active features per token.
    pub l0: f64,
    /// 1 - SSE / SS around the batch mean, pooled over the batch.
    pub explained_variance: f64,
    pub dead_features: i64,
    pub lr: f64,
    pub coefficient: f64,
}

/// What the step's feature activations tell the counters and metrics.
struct ActSummary {
    /// [d_sae] bool: fired on some token of the batch.
    fired: Tensor,
    /// Non-zero activations in the batch.
    active: f64,
    /// Smallest positive activation (BatchTopK's threshold update).
    min_positive: Option<f64>,
}

impl ActSummary {
    fn dense(acts: &Tensor) -> Result<ActSummary> {
        let a = acts.f_detach()?;
        let nz = a.f_ne(0.0)?;
        let positive = a.f_gt(0.0)?;
        let min_positive = if positive.f_any()?.int64_value(&[]) != 0 {
            Some(a.f_masked_select(&positive)?.f_min()?.f_to_kind(Kind::Double)?.double_value(&[]))
        } else {
            None
        };
        Ok(ActSummary { fired: nz.f_any_dim(0, false)?, active: nz.f_sum(Kind::Double)?.double_value(&[]), min_positive })
    }

    /// From the selected (feature, activation) pairs of a sparse step.
    fn sparse(cols: &Tensor, values: &Tensor, d_sae: i64) -> Result<ActSummary> {
        let nz = values.f_ne(0.0)?;
        let fired_cols = cols.f_masked_select(&nz)?;
        let fired = Tensor::f_zeros([d_sae], (Kind::Bool, Device::Cpu))?.f_index_fill(0, &fired_cols, 1)?;
        let positive = values.f_gt(0.0)?;
        let min_positive = if positive.f_any()?.int64_value(&[]) != 0 {
            Some(values.f_masked_select(&positive)?.f_min()?.f_to_kind(Kind::Double)?.double_value(&[]))
        } else {
            None
        };
        Ok(ActSummary { fired, active: nz.f_sum(Kind::Double)?.double_value(&[]), min_positive })
    }
}

struct Param {
    name: &'static str,
    value: Tensor,
    m: Tensor,
    v: Tensor,
}

/// One SAE being trained: its parameters with their Adam moments and the trainer's state.
pub struct SaeTrainer {
    pub cfg: SaeTrainConfig,
    arch: TrainArch,
    norm: Normalization,
    d_sae: i64,
    params: Vec<Param>,
    pub step: i64,
    pub tokens: i64,
    /// Steps since each feature last fired (SAELens `n_forward_passes_since_fired`).
    since_fired: Tensor,
    /// BatchTopK's running threshold (float64, as SAELens keeps it).
    pub topk_threshold: f64,
    /// expected_average_only_in: √d_in / mean ‖x‖, estimated before the first step.
    pub scaling_factor: Option<f64>,
    /// The last step's gradients (before clipping), by parameter name.
    last_grads: Vec<(&'static str, Tensor)>,
}

const PARAM_ORDER: [&str; 8] = ["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag"];

impl SaeTrainer {
    /// A fresh SAE (SAELens's initialisation: Kaiming-uniform W_dec rows scaled to
    /// `decoder_init_norm`, W_enc = W_decᵀ, biases 0, JumpReLU thresholds at their initial value).
    pub fn new(cfg: SaeTrainConfig) -> Result<SaeTrainer> {
        cfg.validate()?;
        let arch = cfg.arch()?;
        let d_sae = cfg.d_sae()?;
        let d_in = cfg.d_in;
        tch::manual_seed(cfg.seed);
        let opts = (Kind::Float, Device::Cpu);
        // kaiming_uniform_(a=0, fan_in=d_in): U(-√(6/d_in), √(6/d_in)).
        let bound = (6.0 / d_in as f64).sqrt();
        let mut w_dec = Tensor::f_rand([d_sae, d_in], opts)?.f_mul_scalar(2.0 * bound)?.f_sub_scalar(bound)?;
        if let Some(n) = cfg.decoder_init_norm {
            w_dec = w_dec.f_div(&w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?)?.f_mul_scalar(n)?;
        }
        if cfg.unit_norm_decoder {
            w_dec = w_dec.f_div(&w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?)?;
        }
        let w_enc = w_dec.f_t_copy()?.f_contiguous()?;
        let mut named: Vec<(&'static str, Tensor)> = vec![("W_enc", w_enc), ("W_dec", w_dec), ("b_dec", Tensor::f_zeros([d_in], opts)?)];
        match arch {
            TrainArch::Gated => {
                for n in ["b_gate", "r_mag", "b_mag"] {
                    named.push((n, Tensor::f_zeros([d_sae], opts)?));
                }
            }
            _ => named.push(("b_enc", Tensor::f_zeros([d_sae], opts)?)),
        }
        if arch == TrainArch::JumpRelu {
            named.push(("threshold", Tensor::f_full([d_sae], cfg.jumprelu_init_threshold, opts)?));
        }
        Self::from_tensors(cfg, named)
    }

    /// A trainer over given initial weights (SAELens names), e.g. to continue from an SAE.
    pub fn from_tensors(cfg: SaeTrainConfig, named: Vec<(&'static str, Tensor)>) -> Result<SaeTrainer> {
        cfg.validate()?;
        let arch = cfg.arch()?;
        let norm = cfg.normalization()?;
        let d_sae = cfg.d_sae()?;
        let mut params = Vec::new();
        for name in PARAM_ORDER {
            if let Some((_, t)) = named.iter().find(|(n, _)| *n == name) {
                let value = t.f_detach()?.f_to_kind(Kind::Float)?;
                let mut value = dup(&value)?;
                let _ = value.f_requires_grad_(true)?;
                params.push(Param { name, m: value.f_zeros_like()?, v: value.f_zeros_like()?, value });
            }
        }
        let since_fired = Tensor::f_zeros([d_sae], (Kind::Float, Device::Cpu))?;
        Ok(SaeTrainer {
            cfg,
            arch,
            norm,
            d_sae,
            params,
            step: 0,
            tokens: 0,
            since_fired,
            topk_threshold: 0.0,
            scaling_factor: None,
            last_grads: Vec::new(),
        })
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params.iter().find(|p| p.name == name).map(|p| &p.value).ok_or_else(|| PrismaError::Internal(format!("no parameter {name}")))
    }

    /// Features that have not fired for more than `dead_feature_window` steps.
    pub fn dead_mask(&self) -> Result<Tensor> {
        Ok(self.since_fired.f_gt(self.cfg.dead_feature_window as f64)?)
    }

    /// Sets b_dec from a first batch (mean or geometric median), when configured.
    pub fn init_b_dec(&mut self, x: &Tensor) -> Result<()> {
        let x = self.scale(x)?;
        let value = match self.cfg.b_dec_init.as_str() {
            "mean" => x.f_mean_dim([0i64].as_slice(), false, Kind::Float)?,
            "geometric_median" => geometric_median(&x, 100, 1e-20)?,
            _ => return Ok(()),
        };
        tch::no_grad(|| -> Result<()> {
            self.p("b_dec")?.shallow_clone().f_copy_(&value)?;
            Ok(())
        })
    }

    fn scale(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Float)?;
        Ok(match self.scaling_factor {
            Some(f) => x.f_mul_scalar(f)?,
            None => x,
        })
    }

    /// Normalisation on the way in (the SAE reads `sae_in`), undone on the way out.
    fn norm_in(&self, x: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        match self.norm {
            Normalization::LayerNorm => {
                let mu = x.f_mean_dim([-1i64].as_slice(), true, Kind::Float)?;
                let c = x.f_sub(&mu)?;
                let std = c.f_std_dim([-1i64].as_slice(), true, true)?;
                Ok((c.f_div(&std.f_add_scalar(1e-5)?)?, Some((mu, std))))
            }
            Normalization::ConstantNormRescale => {
                let coeff =
                    x.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?.f_reciprocal()?.f_mul_scalar((self.cfg.d_in as f64).sqrt())?;
                Ok((x.f_mul(&coeff)?, Some((coeff.f_zeros_like()?, coeff))))
            }
            _ => Ok((x.shallow_clone(), None)),
        }
    }

    fn norm_out(&self, y: &Tensor, state: &Option<(Tensor, Tensor)>) -> Result<Tensor> {
        Ok(match (self.norm, state) {
            (Normalization::LayerNorm, Some((mu, std))) => y.f_mul(std)?.f_add(mu)?,
            (Normalization::ConstantNormRescale, Some((_, coeff))) => y.f_div(coeff)?,
            _ => y.shallow_clone(),
        })
    }

    fn act_times_w_dec(&self, acts: &Tensor, w_dec: &Tensor) -> Result<Tensor> {
        if matches!(self.arch, TrainArch::TopK | TrainArch::BatchTopK) && self.cfg.rescale_acts_by_decoder_norm {
            let inv = w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?.f_reciprocal()?;
            return Ok(acts.f_mul(&inv)?.f_matmul(w_dec)?);
        }
        Ok(acts.f_matmul(w_dec)?)
    }

    /// SAELens's `training_forward_pass`: (feature acts, hidden pre, sae_out, losses), where the
    /// losses are (mse, sparsity, aux) and their sum is what is differentiated.
    fn forward(&mut self, x: &Tensor, dead: &Tensor, coefficient: f64) -> Result<(Tensor, Tensor, [Tensor; 3])> {
        let (w_enc, w_dec, b_dec) = (self.p("W_enc")?.shallow_clone(), self.p("W_dec")?.shallow_clone(), self.p("b_dec")?.shallow_clone());
        let (normed, state) = self.norm_in(x)?;
        let sae_in = if self.cfg.apply_b_dec_to_input { normed.f_sub(&b_dec)? } else { normed };
        let zero = || Tensor::f_zeros([], (Kind::Float, Device::Cpu));
        let (acts, hidden_pre, gate_act) = match self.arch {
            TrainArch::Standard => {
                let pre = sae_in.f_matmul(&w_enc)?.f_add(self.p("b_enc")?)?;
                (pre.f_relu()?, pre, None)
            }
            TrainArch::TopK | TrainArch::BatchTopK => {
                let mut pre = sae_in.f_matmul(&w_enc)?.f_add(self.p("b_enc")?)?;
                if self.cfg.rescale_acts_by_decoder_norm {
                    pre = pre.f_mul(&w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?)?;
                }
                let k = self.cfg.k.unwrap_or(1.0);
                let acts = if self.arch == TrainArch::TopK { super::model::top_k_relu(&pre, k as i64)? } else { batch_top_k(&pre, k)? };
                (acts, pre, None)
            }
            TrainArch::JumpRelu => {
                let threshold = self.p("threshold")?.shallow_clone();
                let pre = sae_in.f_matmul(&w_enc)?.f_add(self.p("b_enc")?)?;
                let bw = self.cfg.jumprelu_bandwidth;
                // Forward x·[x > θ]; the input's gradient is [x > θ]·g and θ's is
                // -Σ_batch (θ/bw)·rect((x-θ)/bw)·g (SAELens's JumpReLU autograd function). The
                // second term is 0 in value and carries θ's straight-through gradient.
                let pre_d = pre.f_detach()?;
                let th_d = threshold.f_detach()?;
                let mask = pre_d.f_gt_tensor(&th_d)?.f_to_kind(Kind::Float)?;
                let rect = rectangle(&pre_d.f_sub(&th_d)?.f_div_scalar(bw)?)?;
                let ste = th_d.f_div_scalar(bw)?.f_mul(&rect)?;
                let acts = pre.f_mul(&mask)?.f_add(&ste.f_mul(&th_d.f_sub(&threshold)?)?)?;
                (acts, pre, None)
            }
            TrainArch::Gated => {
                let gate = sae_in.f_matmul(&w_enc)?.f_add(self.p("b_gate")?)?;
                let active = gate.f_detach()?.f_gt(0.0)?.f_to_kind(Kind::Float)?;
                let w_mag = w_enc.f_mul(&self.p("r_mag")?.f_exp()?)?;
                let pre = sae_in.f_matmul(&w_mag)?.f_add(self.p("b_mag")?)?;
                (active.f_mul(&pre.f_relu()?)?, pre, Some(()))
            }
        };
        let recons = self.act_times_w_dec(&acts, &w_dec)?.f_add(&b_dec)?;
        let sae_out = self.norm_out(&recons, &state)?;
        let mse = sae_out.f_sub(x)?.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?;
        let w_dec_norm = || w_dec.f_norm_scalaropt_dim(2, [1i64].as_slice(), false);
        let (sparsity, aux) = match self.arch {
            TrainArch::Standard => {
                let weighted = acts.f_mul(&w_dec_norm()?)?;
                let per = weighted.f_norm_scalaropt_dim(self.cfg.lp_norm, [-1i64].as_slice(), false)?;
                (per.f_mul_scalar(coefficient)?.f_mean(Kind::Float)?, zero()?)
            }
            TrainArch::TopK | TrainArch::BatchTopK => (zero()?, self.auxk_loss(x, &sae_out, &hidden_pre, dead, &w_dec)?),
            TrainArch::JumpRelu => {
                let threshold = self.p("threshold")?.shallow_clone();
                let bw = self.cfg.jumprelu_bandwidth;
                let pre_d = hidden_pre.f_detach()?;
                let th_d = threshold.f_detach()?;
                // Step: [x > θ], θ's gradient -Σ_batch (1/bw)·rect((x-θ)/bw)·g.
                let step = pre_d.f_gt_tensor(&th_d)?.f_to_kind(Kind::Float)?;
                let ste = rectangle(&pre_d.f_sub(&th_d)?.f_div_scalar(bw)?)?.f_div_scalar(bw)?;
                let step = step.f_add(&ste.f_mul(&th_d.f_sub(&threshold)?)?)?;
                let l0 = step.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
                (l0.f_mul_scalar(coefficient)?.f_mean(Kind::Float)?, zero()?)
            }
            TrainArch::Gated => {
                let _ = gate_act;
                let centred = if self.cfg.apply_b_dec_to_input { x.f_sub(&b_dec)? } else { x.shallow_clone() };
                let pi_gate = centred.f_matmul(&w_enc)?.f_add(self.p("b_gate")?)?.f_relu()?;
                let l1 = pi_gate.f_mul(&w_dec_norm()?)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?;
                let via_gate = pi_gate.f_matmul(&w_dec)?.f_add(&b_dec)?;
                let aux = via_gate.f_sub(x)?.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?;
                (l1.f_mul_scalar(coefficient)?, aux)
            }
        };
        Ok((acts, sae_out, [mse, sparsity, aux]))
    }

    /// AuxK: the top k_aux = d_in/2 dead latents reconstruct the residual (SAELens
    /// `calculate_topk_aux_loss`).
    fn auxk_loss(&self, x: &Tensor, sae_out: &Tensor, hidden_pre: &Tensor, dead: &Tensor, w_dec: &Tensor) -> Result<Tensor> {
        let n_dead = dead.f_sum(Kind::Int64)?.int64_value(&[]);
        if n_dead == 0 {
            return Ok(Tensor::f_zeros([], (Kind::Float, Device::Cpu))?);
        }
        let residual = x.f_sub(sae_out)?.f_detach()?;
        let k_aux = self.cfg.d_in / 2;
        let scale = (n_dead as f64 / k_aux as f64).min(1.0);
        let k_aux = k_aux.min(n_dead);
        let neg_inf = Tensor::f_full([], f64::NEG_INFINITY, (Kind::Float, Device::Cpu))?;
        let latents = hidden_pre.f_where_self(&dead.f_unsqueeze(0)?, &neg_inf)?;
        let (values, indices) = latents.f_topk(k_aux, -1, true, false)?;
        let aux_acts = hidden_pre.f_zeros_like()?.f_scatter(-1, &indices, &values)?;
        let recons = self.act_times_w_dec(&aux_acts, w_dec)?;
        let loss = recons.f_sub(&residual)?.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?;
        Ok(loss.f_mul_scalar(self.cfg.aux_loss_coefficient * scale)?)
    }

    /// One training step on a batch [n, d_in] of raw (unscaled) activations.
    pub fn train_step(&mut self, batch: &Tensor) -> Result<StepMetrics> {
        let x = self.scale(batch)?;
        if x.size() != [x.size()[0], self.cfg.d_in] || x.dim() != 2 {
            return Err(PrismaError::Shape(format!("a training batch is [n, {}], got {:?}", self.cfg.d_in, batch.size())));
        }
        if self.arch == TrainArch::JumpRelu {
            tch::no_grad(|| -> Result<()> {
                let _ = self.p("threshold")?.shallow_clone().f_clamp_min_(0.0)?;
                Ok(())
            })?;
        }
        let dead = self.dead_mask()?;
        let coefficient = self.cfg.coefficient_at(self.step);
        let sparse = matches!(self.arch, TrainArch::TopK | TrainArch::BatchTopK) && !self.cfg.dense_products;
        let (summary, sae_out, losses, grads) = if sparse {
            let (summary, sae_out, losses, grads) = tch::no_grad(|| self.sparse_topk_step(&x, &dead))?;
            (summary, sae_out, losses, grads)
        } else {
            for p in &self.params {
                let mut g = p.value.f_grad()?;
                if g.defined() {
                    let _ = g.f_zero_()?;
                }
            }
            let (acts, sae_out, losses) = self.forward(&x, &dead, coefficient)?;
            losses[0].f_add(&losses[1])?.f_add(&losses[2])?.f_backward()?;
            let grads = self.params.iter().map(|p| p.value.f_grad()).collect::<std::result::Result<Vec<_>, _>>()?;
            (ActSummary::dense(&acts)?, sae_out, losses, grads)
        };
        let total = losses[0].f_add(&losses[1])?.f_add(&losses[2])?;
        // Dead-feature counters, from this step's activations.
        tch::no_grad(|| -> Result<()> {
            let _ = self.since_fired.f_add_scalar_(1.0)?;
            let _ = self.since_fired.f_masked_fill_(&summary.fired, 0.0)?;
            if let (TrainArch::BatchTopK, Some(min)) = (self.arch, summary.min_positive) {
                let lr = self.cfg.topk_threshold_lr;
                self.topk_threshold = (1.0 - lr) * self.topk_threshold + lr * min;
            }
            Ok(())
        })?;
        let lr = self.cfg.lr_at(self.step);
        self.last_grads = self.params.iter().zip(&grads).map(|(p, g)| (p.name, g.shallow_clone())).collect();
        self.optimizer_step(lr, grads)?;
        let resample_now = self.cfg.resample_every > 0 && (self.step + 1) % self.cfg.resample_every == 0;
        if resample_now {
            tch::no_grad(|| self.resample_dead(&x, &sae_out.f_detach()?))?;
        }
        let metrics = tch::no_grad(|| -> Result<StepMetrics> {
            let n = x.size()[0];
            let l0 = summary.active / n as f64;
            let out = sae_out.f_detach()?;
            let sse = out.f_sub(&x)?.f_square()?.f_sum(Kind::Double)?.double_value(&[]);
            let centred = x.f_sub(&x.f_mean_dim([0i64].as_slice(), true, Kind::Float)?)?;
            let ss = centred.f_square()?.f_sum(Kind::Double)?.double_value(&[]);
            let scalar = |t: &Tensor| t.f_detach().and_then(|t| t.f_to_kind(Kind::Double)).map(|t| t.double_value(&[]));
            Ok(StepMetrics {
                step: self.step,
                tokens: self.tokens + n,
                loss: scalar(&total)?,
                mse_loss: scalar(&losses[0])?,
                sparsity_loss: scalar(&losses[1])?,
                aux_loss: scalar(&losses[2])?,
                l0,
                explained_variance: if ss > 0.0 { 1.0 - sse / ss } else { 0.0 },
                dead_features: self.dead_mask()?.f_sum(Kind::Int64)?.int64_value(&[]),
                lr,
                coefficient,
            })
        })?;
        self.step += 1;
        self.tokens += x.size()[0];
        Ok(metrics)
    }

    /// Anthropic's resampling: each dead feature gets a token drawn with probability ∝ its squared
    /// reconstruction loss; the decoder row becomes that input (minus b_dec) normalised, the encoder
    /// column the same direction at 0.2 × the mean norm of the live encoder columns, the bias 0,
    /// and its Adam moments and counter restart. The draw is seeded by (seed, step), so a resumed
    /// run draws the same.
    fn resample_dead(&mut self, x: &Tensor, sae_out: &Tensor) -> Result<()> {
        let dead = self.dead_mask()?;
        let dead_idx = dead.f_nonzero()?.f_reshape([-1i64])?;
        let n_dead = dead_idx.size()[0];
        if n_dead == 0 {
            return Ok(());
        }
        let loss = x.f_sub(sae_out)?.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
        let weights = loss.f_square()?.f_add_scalar(1e-12)?;
        tch::manual_seed(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(self.step));
        let picks = weights.f_multinomial(n_dead, true)?;
        let b_dec = self.p("b_dec")?.f_detach()?;
        let inputs = x.f_index_select(0, &picks)?.f_sub(&b_dec)?;
        let dirs = inputs.f_div(&inputs.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?.f_clamp_min(1e-8)?)?;
        let w_enc = self.p("W_enc")?.shallow_clone();
        let alive = dead.f_logical_not()?;
        let enc_norms = w_enc.f_norm_scalaropt_dim(2, [0i64].as_slice(), false)?;
        let alive_mean = if alive.f_any()?.int64_value(&[]) != 0 {
            enc_norms.f_masked_select(&alive)?.f_mean(Kind::Float)?.double_value(&[])
        } else {
            1.0
        };
        for p in self.params.iter_mut() {
            let (axis, values) = match p.name {
                "W_dec" => (0, dirs.shallow_clone()),
                "W_enc" => (1, dirs.f_mul_scalar(0.2 * alive_mean)?.f_t_copy()?),
                "b_enc" => (0, Tensor::f_zeros([n_dead], (Kind::Float, Device::Cpu))?),
                _ => continue,
            };
            let _ = p.value.f_index_copy_(axis, &dead_idx, &values)?;
            let _ = p.m.f_index_fill_(axis, &dead_idx, 0.0)?;
            let _ = p.v.f_index_fill_(axis, &dead_idx, 0.0)?;
        }
        let _ = self.since_fired.f_index_fill_(0, &dead_idx, 0.0)?;
        Ok(())
    }

    /// The TopK / BatchTopK step with sparse products (see `sparse`): activations, output, the
    /// three loss terms and each parameter's gradient, in `params` order.
    fn sparse_topk_step(&self, x: &Tensor, dead: &Tensor) -> Result<(ActSummary, Tensor, [Tensor; 3], Vec<Tensor>)> {
        use super::sparse::{bag_sum, from_flat, from_topk, row_dots, scatter_rows, Selection};
        let (w_enc, w_dec, b_dec, b_enc) =
            (self.p("W_enc")?.f_detach()?, self.p("W_dec")?.f_detach()?, self.p("b_dec")?.f_detach()?, self.p("b_enc")?.f_detach()?);
        let (b, n) = (x.size()[0], self.d_sae);
        let sae_in = if self.cfg.apply_b_dec_to_input { x.f_sub(&b_dec)? } else { x.shallow_clone() };
        let h = sae_in.f_matmul(&w_enc)?.f_add(&b_enc)?;
        let z = if self.cfg.rescale_acts_by_decoder_norm {
            h.f_mul(&w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?)?
        } else {
            h.shallow_clone()
        };
        let k = self.cfg.k.unwrap_or(1.0);
        // Selected features with their decode coefficient h (0 where the ReLU is 0), and the
        // activations as SAELens reports them (relu(z)) for counters and the threshold.
        let (sel, act_vals) = if self.arch == TrainArch::TopK {
            let (zv, zi) = z.f_topk((k as i64).min(n), -1, true, false)?;
            let pos = zv.f_gt(0.0)?.f_to_kind(Kind::Float)?;
            let hv = h.f_gather(1, &zi, false)?.f_mul(&pos)?;
            (from_topk(&zi, &hv)?, (zv.f_relu()?, zi))
        } else {
            let zr = z.f_relu()?.f_reshape([-1i64])?;
            let keep = ((k * b as f64) as i64).min(b * n);
            let (zv, flat) = zr.f_topk(keep, -1, true, true)?;
            let pos = zv.f_gt(0.0)?.f_to_kind(Kind::Float)?;
            let hv = h.f_reshape([-1i64])?.f_index_select(0, &flat)?.f_mul(&pos)?;
            let sel = from_flat(&flat, &hv, b, n)?;
            (sel, (zv, flat))
        };
        let summary = ActSummary::sparse(&act_vals.1.f_reshape([-1i64])?.f_remainder(n)?, &act_vals.0.f_reshape([-1i64])?, n)?;
        let sae_out = bag_sum(&w_dec, &sel)?.f_add(&b_dec)?;
        let diff = sae_out.f_sub(x)?;
        let mse = diff.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?;
        let g = diff.f_mul_scalar(2.0 / b as f64)?;
        // AuxK over dead features (their activations skip the ReLU).
        let n_dead = dead.f_sum(Kind::Int64)?.int64_value(&[]);
        let mut aux_sel: Option<(Selection, Tensor)> = None;
        let aux = if n_dead > 0 {
            let residual = diff.f_neg()?;
            let k_aux = self.cfg.d_in / 2;
            let scale = (n_dead as f64 / k_aux as f64).min(1.0);
            let k_aux = k_aux.min(n_dead);
            let neg_inf = Tensor::f_full([], f64::NEG_INFINITY, (Kind::Float, tch::Device::Cpu))?;
            let (_, ei) = z.f_where_self(&dead.f_unsqueeze(0)?, &neg_inf)?.f_topk(k_aux, -1, true, false)?;
            let hv = h.f_gather(1, &ei, false)?;
            let sel_aux = from_topk(&ei, &hv)?;
            let ad = bag_sum(&w_dec, &sel_aux)?.f_sub(&residual)?;
            let coef = self.cfg.aux_loss_coefficient * scale;
            let loss = ad.f_square()?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?.f_mean(Kind::Float)?.f_mul_scalar(coef)?;
            aux_sel = Some((sel_aux, ad.f_mul_scalar(2.0 * coef / b as f64)?));
            loss
        } else {
            Tensor::f_zeros([], (Kind::Float, tch::Device::Cpu))?
        };
        // Gradients.
        let mut g_wdec = w_dec.f_zeros_like()?;
        scatter_rows(&mut g_wdec, &sel, &g)?;
        let relu_open = sel.vals.f_ne(0.0)?.f_to_kind(Kind::Float)?;
        let dh = row_dots(&w_dec, &sel, &g)?.f_mul(&relu_open)?;
        let mut dh_sels = vec![Selection {
            rows: sel.rows.shallow_clone(),
            cols: sel.cols.shallow_clone(),
            vals: dh,
            offsets: sel.offsets.shallow_clone(),
        }];
        if let Some((sa, ga)) = &aux_sel {
            scatter_rows(&mut g_wdec, sa, ga)?;
            let dha = row_dots(&w_dec, sa, ga)?;
            dh_sels.push(Selection {
                rows: sa.rows.shallow_clone(),
                cols: sa.cols.shallow_clone(),
                vals: dha,
                offsets: sa.offsets.shallow_clone(),
            });
        }
        let mut g_wenc_t = Tensor::f_zeros([n, self.cfg.d_in], (Kind::Float, tch::Device::Cpu))?;
        let mut g_benc = Tensor::f_zeros([n], (Kind::Float, tch::Device::Cpu))?;
        let mut g_bdec = g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
        let w_enc_t = if self.cfg.apply_b_dec_to_input { Some(w_enc.f_t_copy()?.f_contiguous()?) } else { None };
        for ds in &dh_sels {
            scatter_rows(&mut g_wenc_t, ds, &sae_in)?;
            let _ = g_benc.f_index_add_(0, &ds.cols, &ds.vals)?;
            if let Some(wt) = &w_enc_t {
                let one_bag = Selection {
                    rows: ds.rows.shallow_clone(),
                    cols: ds.cols.shallow_clone(),
                    vals: ds.vals.shallow_clone(),
                    offsets: Tensor::f_zeros([1], (Kind::Int64, tch::Device::Cpu))?,
                };
                g_bdec = g_bdec.f_sub(&bag_sum(wt, &one_bag)?.f_squeeze_dim(0)?)?;
            }
        }
        let g_wenc = g_wenc_t.f_t_copy()?.f_contiguous()?;
        let grads = self
            .params
            .iter()
            .map(|p| match p.name {
                "W_enc" => Ok(g_wenc.shallow_clone()),
                "b_enc" => Ok(g_benc.shallow_clone()),
                "W_dec" => Ok(g_wdec.shallow_clone()),
                "b_dec" => Ok(g_bdec.shallow_clone()),
                other => Err(PrismaError::Internal(format!("the sparse step has no gradient for {other}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((summary, sae_out, [mse, Tensor::f_zeros([], (Kind::Float, tch::Device::Cpu))?, aux], grads))
    }

    /// Decoder constraint (optional), gradient clipping at a global norm of 1.0, then Adam as
    /// torch.optim.Adam computes it.
    fn optimizer_step(&mut self, lr: f64, grads: Vec<Tensor>) -> Result<()> {
        let (b1, b2, eps) = (self.cfg.adam_beta1, self.cfg.adam_beta2, 1e-8);
        let unit_norm = self.cfg.unit_norm_decoder;
        tch::no_grad(|| -> Result<()> {
            let mut grads = grads;
            if unit_norm {
                let at = self.params.iter().position(|p| p.name == "W_dec");
                if let Some(i) = at {
                    let w = &self.params[i].value;
                    let g = &grads[i];
                    if g.defined() {
                        let parallel = g.f_mul(w)?.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
                        grads[i] = g.f_sub(&parallel.f_mul(w)?)?;
                    }
                }
            }
            let norms: Vec<Tensor> = grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.f_norm_scalaropt_dim(2, &[] as &[i64], false))
                .collect::<std::result::Result<_, _>>()?;
            let total = Tensor::f_stack(&norms, 0)?.f_norm_scalaropt_dim(2, &[] as &[i64], false)?;
            let coef = total.f_add_scalar(1e-6)?.f_reciprocal()?.f_clamp_max(1.0)?;
            let t = (self.step + 1) as f64;
            let (c1, c2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
            for (p, g) in self.params.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                let g = g.f_mul(&coef)?;
                let _ = p.m.f_lerp_(&g, 1.0 - b1)?;
                let _ = p.v.f_mul_scalar_(b2)?.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - b2)?)?;
                let denom = p.v.f_sqrt()?.f_div_scalar(c2.sqrt())?.f_add_scalar(eps)?;
                let _ = p.value.f_sub_(&p.m.f_div(&denom)?.f_mul_scalar(lr / c1)?)?;
            }
            if unit_norm {
                let w = self.p("W_dec")?.shallow_clone();
                let norms = w.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
                let _ = w.shallow_clone().f_div_(&norms)?;
            }
            Ok(())
        })
    }

    /// The trained SAE in inference form, as SAELens's `save_inference_model` writes it.
    pub fn to_sae(&self) -> Result<Sae> {
        let get = |n: &str| -> Result<Option<Tensor>> {
            Ok(match self.params.iter().find(|p| p.name == n) {
                Some(p) => Some(dup(&p.value.f_detach()?)?),
                None => None,
            })
        };
        let need = |n: &str| -> Result<Tensor> { get(n)?.ok_or_else(|| PrismaError::Internal(format!("no parameter {n}"))) };
        let (mut w_enc, mut w_dec, mut b_enc) = (need("W_enc")?, need("W_dec")?, get("b_enc")?);
        let mut threshold = get("threshold")?;
        let architecture = match self.arch {
            TrainArch::Standard => Architecture::Standard,
            TrainArch::TopK => Architecture::TopK,
            TrainArch::BatchTopK | TrainArch::JumpRelu => Architecture::JumpRelu,
            TrainArch::Gated => Architecture::Gated,
        };
        if matches!(self.arch, TrainArch::TopK | TrainArch::BatchTopK) && self.cfg.rescale_acts_by_decoder_norm {
            // SAELens _fold_norm_topk: the decoder norms move into the encoder.
            let norms = w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?.f_clamp_min(1e-8)?;
            if let Some(b) = &b_enc {
                b_enc = Some(b.f_mul(&norms)?);
            }
            w_dec = w_dec.f_div(&norms.f_unsqueeze(1)?)?;
            w_enc = w_enc.f_mul(&norms.f_unsqueeze(0)?)?;
        }
        if self.arch == TrainArch::BatchTopK {
            threshold = Some(Tensor::f_full([self.d_sae], self.topk_threshold, (Kind::Float, Device::Cpu))?);
        }
        let mut metadata = Map::new();
        metadata.insert("sae_lens_version".into(), json!(super::config::SAELENS_FORMAT_VERSION));
        metadata.insert("trained_with".into(), json!(format!("vit-prisma {}", env!("CARGO_PKG_VERSION"))));
        metadata.insert("training_architecture".into(), json!(self.cfg.architecture));
        metadata.insert("training_config".into(), serde_json::to_value(&self.cfg).map_err(|e| PrismaError::Internal(e.to_string()))?);
        if let Some(h) = &self.cfg.hook_name {
            metadata.insert("hook_name".into(), json!(h));
        }
        if let Some(m) = &self.cfg.model_name {
            metadata.insert("model_name".into(), json!(m));
        }
        let mut extra = Map::new();
        extra.insert("device".into(), json!("cpu"));
        extra.insert("reshape_activations".into(), json!("none"));
        let mut cfg = SaeConfig {
            architecture,
            d_in: self.cfg.d_in,
            d_sae: self.d_sae,
            kind: Kind::Float,
            apply_b_dec_to_input: self.cfg.apply_b_dec_to_input,
            normalize_activations: if self.norm == Normalization::ExpectedAverageOnlyIn { Normalization::None } else { self.norm },
            k: if self.arch == TrainArch::TopK { self.cfg.k.map(|k| k as i64) } else { None },
            rescale_acts_by_decoder_norm: false,
            metadata,
            extra,
        };
        if let Some(t) = &self.cfg.tokens {
            cfg.set_tokens(TokenSelection::parse(t)?);
        }
        let mut sae = Sae {
            cfg,
            w_enc,
            b_enc: if self.arch == TrainArch::Gated { None } else { b_enc },
            w_dec,
            b_dec: need("b_dec")?,
            threshold,
            b_gate: get("b_gate")?,
            r_mag: get("r_mag")?,
            b_mag: get("b_mag")?,
        };
        if let Some(f) = self.scaling_factor {
            // The SAE was trained on x·f: fold f so it reads raw activations (SAELens does this at
            // the end of training).
            sae.cfg.normalize_activations = Normalization::ExpectedAverageOnlyIn;
            sae.fold_scaling_factor(f)?;
        }
        Ok(sae)
    }

    /// (name, tensor) of everything a checkpoint holds for this SAE, state scalars in `meta`.
    pub(crate) fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((format!("param.{}", p.name), dup(&p.value.f_detach()?)?));
            out.push((format!("adam_m.{}", p.name), dup(&p.m)?));
            out.push((format!("adam_v.{}", p.name), dup(&p.v)?));
        }
        out.push(("since_fired".into(), dup(&self.since_fired)?));
        Ok(out)
    }

    pub(crate) fn state_meta(&self) -> serde_json::Value {
        json!({"step": self.step, "tokens": self.tokens, "topk_threshold": self.topk_threshold, "scaling_factor": self.scaling_factor})
    }

    pub(crate) fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>, meta: &serde_json::Value) -> Result<()> {
        let bad = |what: String| PrismaError::TensorFile { path: "checkpoint".into(), reason: what };
        tch::no_grad(|| -> Result<()> {
            for p in self.params.iter_mut() {
                for (prefix, target) in [("param", &mut p.value), ("adam_m", &mut p.m), ("adam_v", &mut p.v)] {
                    let key = format!("{prefix}.{}", p.name);
                    let src = tensors.get(&key).ok_or_else(|| bad(format!("missing '{key}'")))?;
                    if src.size() != target.size() {
                        return Err(bad(format!("'{key}' has shape {:?}, expected {:?}", src.size(), target.size())));
                    }
                    target.f_copy_(src)?;
                }
            }
            let src = tensors.get("since_fired").ok_or_else(|| bad("missing 'since_fired'".into()))?;
            self.since_fired.f_copy_(src)?;
            Ok(())
        })?;
        self.step = meta.get("step").and_then(|v| v.as_i64()).ok_or_else(|| bad("no step".into()))?;
        self.tokens = meta.get("tokens").and_then(|v| v.as_i64()).unwrap_or(0);
        self.topk_threshold = meta.get("topk_threshold").and_then(|v| v.as_f64()).unwrap_or(0.0);
        self.scaling_factor = meta.get("scaling_factor").and_then(|v| v.as_f64());
        Ok(())
    }

    /// Estimates √d_in / mean ‖x‖ from batches (SAELens `ActivationScaler`), when configured.
    pub fn estimate_scaling_factor(&mut self, batches: &[Tensor]) -> Result<()> {
        if self.norm != Normalization::ExpectedAverageOnlyIn || batches.is_empty() {
            return Ok(());
        }
        let (mut total, mut count) = (0.0f64, 0i64);
        for b in batches {
            let norms = b.f_to_kind(Kind::Float)?.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?;
            total += norms.f_sum(Kind::Float)?.double_value(&[]);
            count += norms.numel() as i64;
        }
        self.scaling_factor = Some((self.cfg.d_in as f64).sqrt() / (total / count as f64));
        Ok(())
    }

    /// The gradient of `name` at the last step, before clipping (for tests and inspection).
    pub fn last_gradient(&self, name: &str) -> Option<&Tensor> {
        self.last_grads.iter().find(|(n, _)| *n == name).map(|(_, g)| g)
    }

    /// The parameter named `name` (SAELens spelling), for tests and inspection.
    pub fn parameter(&self, name: &str) -> Option<&Tensor> {
        self.params.iter().find(|p| p.name == name).map(|p| &p.value)
    }

    /// Sets the dead-feature counters (steps since each feature fired), e.g. to reproduce a state.
    pub fn set_steps_since_fired(&mut self, counts: &Tensor) -> Result<()> {
        tch::no_grad(|| self.since_fired.f_copy_(&counts.f_to_kind(Kind::Float)?).map(|_| ()).map_err(Into::into))
    }
}

/// A fresh contiguous copy.
fn dup(t: &Tensor) -> Result<Tensor> {
    let mut out = t.f_empty_like()?.f_contiguous()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// 1 inside (-0.5, 0.5), else 0 (SAELens `rectangle`).
fn rectangle(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_gt(-0.5)?.f_logical_and(&x.f_lt(0.5)?)?.f_to_kind(Kind::Float)?)
}

/// SAELens `BatchTopK`: ReLU, then the k·n largest values of the whole batch kept.
fn batch_top_k(x: &Tensor, k: f64) -> Result<Tensor> {
    let acts = x.f_relu()?;
    let flat = acts.f_flatten(0, -1)?;
    let n = acts.size()[..acts.dim() - 1].iter().product::<i64>();
    let keep = ((k * n as f64) as i64).min(flat.size()[0]);
    let (values, indices) = flat.f_topk(keep, -1, true, true)?;
    Ok(flat.f_zeros_like()?.f_scatter(-1, &indices, &values)?.f_reshape(acts.size())?)
}

/// Weiszfeld's algorithm for the geometric median of the rows of `x` (what ViT-Prisma's
/// `compute_geometric_median` computes), from the mean, until the objective stops improving by
/// more than `ftol` relative.
pub fn geometric_median(x: &Tensor, maxiter: usize, ftol: f64) -> Result<Tensor> {
    let x = x.f_to_kind(Kind::Double)?;
    let mut median = x.f_mean_dim([0i64].as_slice(), false, Kind::Double)?;
    let objective = |m: &Tensor| -> Result<f64> {
        Ok(x.f_sub(m)?.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?.f_sum(Kind::Double)?.double_value(&[]))
    };
    let mut last = objective(&median)?;
    for _ in 0..maxiter {
        let dist = x.f_sub(&median)?.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?.f_clamp_min(1e-12)?;
        let w = dist.f_reciprocal()?;
        median = x.f_mul(&w.f_unsqueeze(1)?)?.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?.f_div(&w.f_sum(Kind::Double)?)?;
        let now = objective(&median)?;
        if (last - now).abs() <= ftol * last {
            break;
        }
        last = now;
    }
    Ok(median.f_to_kind(Kind::Float)?)
}
