//! What every trainer here shares: AdamW over a named list of leaves (written out because tch's
//! optimisers need a VarStore and the hooked models hold plain tensors), the warm-up + cosine
//! schedule, the per-epoch data order, checkpoints of weights + moments + step, and initialisation.

use crate::error::{PrismaError, Result};
use crate::model::to_f32_vec;
use crate::models::vit::{BlockWeights, LayerNormWeights};
use crate::tensor_file::save_safetensors;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

struct Param {
    name: String,
    value: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// Trainable leaves (shallow clones of the model's own tensors, so updates show in the model)
/// with their AdamW moments, in a fixed order that is also the checkpoint order.
pub struct ParamSet {
    params: Vec<Param>,
}

impl ParamSet {
    /// `list`: (checkpoint name, tensor, whether weight decay applies).
    pub fn new(list: Vec<(String, Tensor, bool)>) -> Result<ParamSet> {
        let params = list
            .into_iter()
            .map(|(name, mut value, decay)| {
                let _ = value.f_requires_grad_(true)?;
                Ok(Param { m: value.f_zeros_like()?, v: value.f_zeros_like()?, name, value, decay })
            })
            .collect::<Result<_>>()?;
        Ok(ParamSet { params })
    }

    pub fn zero_grad(&self) -> Result<()> {
        for p in &self.params {
            let mut g = p.value.f_grad()?;
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// One AdamW update (decoupled weight decay, bias-corrected moments) as step `step` (0-based).
    pub fn adamw_step(&mut self, step: i64, lr: f64, weight_decay: f64) -> Result<()> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let t = (step + 1) as f64;
        let (c1, c2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        tch::no_grad(|| -> Result<()> {
            for p in self.params.iter_mut() {
                let g = p.value.f_grad()?;
                if !g.defined() {
                    continue;
                }
                let _ = p.m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                let _ = p.v.f_mul_scalar_(b2)?.f_add_(&g.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                if p.decay {
                    let _ = p.value.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                let update = p.m.f_div_scalar(c1)?.f_div(&p.v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(eps)?)?.f_mul_scalar(lr)?;
                let _ = p.value.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// Weights, AdamW moments, the step and the training config (JSON), in one safetensors file
    /// written atomically.
    pub fn save_checkpoint(&self, path: &Path, step: i64, config: &impl Serialize) -> Result<()> {
        let config_json = serde_json::to_string(config).map_err(|e| PrismaError::Internal(e.to_string()))?;
        let mut tensors = Vec::new();
        for p in &self.params {
            for (suffix, t) in [("", &p.value), (".adam_m", &p.m), (".adam_v", &p.v)] {
                let (shape, data) = to_f32_vec(&t.f_detach()?)?;
                tensors.push((format!("{}{suffix}", p.name), shape, data));
            }
        }
        let meta = HashMap::from([("step".to_string(), step.to_string()), ("train_config".to_string(), config_json)]);
        save_safetensors(path, &tensors, Some(meta))
    }

    /// Restores a checkpoint written by `save_checkpoint` with the same config as `current`; returns
    /// its step. The saved config is read as a `C` (so fields with defaults compare as filled in)
    /// and compared with `current` as JSON values, whatever the key order.
    pub fn load_checkpoint<C: Serialize + DeserializeOwned>(&mut self, path: &Path, current: &C) -> Result<i64> {
        let bad = |reason: String| PrismaError::TensorFile { path: path.into(), reason };
        let bytes = std::fs::read(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let step: i64 = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no step in the checkpoint".into()))?;
        let saved = meta.get("train_config").ok_or_else(|| bad("no training config in the checkpoint".into()))?;
        let as_value = |c: &C| serde_json::to_value(c).ok();
        let same_config = serde_json::from_str::<C>(saved).ok().and_then(|c| as_value(&c));
        if same_config.is_none() || same_config != as_value(current) {
            return Err(bad("the checkpoint was made with a different training config".into()));
        }
        let tensors: HashMap<String, Tensor> = crate::weights::store::read_safetensors_f32(path)?.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for p in self.params.iter_mut() {
                for (suffix, target) in [("", &mut p.value), (".adam_m", &mut p.m), (".adam_v", &mut p.v)] {
                    let name = format!("{}{suffix}", p.name);
                    let src = tensors.get(&name).ok_or_else(|| bad(format!("missing '{name}'")))?;
                    if src.size() != target.size() {
                        return Err(bad(format!("'{name}' has shape {:?}, expected {:?}", src.size(), target.size())));
                    }
                    target.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        Ok(step)
    }
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to 0 at `total`.
pub fn warmup_cosine(step: i64, lr: f64, warmup: i64, total: i64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The data order: epoch e is a permutation drawn from a generator seeded with (seed, e), so the
/// batch at any step is a function of (seed, step) alone. Drawn once per epoch, not per step.
#[derive(Default)]
pub struct EpochOrder {
    current: Option<(i64, Tensor)>,
}

impl EpochOrder {
    /// Indices of the batch at `step` over `n` examples (the last partial batch of an epoch is dropped).
    pub fn batch(&mut self, step: i64, n: i64, batch_size: i64, seed: i64) -> Result<Tensor> {
        let per_epoch = n / batch_size;
        let epoch = step / per_epoch;
        let offset = (step % per_epoch) * batch_size;
        if self.current.as_ref().map(|(e, _)| *e) != Some(epoch) {
            tch::manual_seed(seed.wrapping_mul(1_000_003).wrapping_add(epoch));
            self.current = Some((epoch, Tensor::f_randperm(n, (Kind::Int64, Device::Cpu))?));
        }
        let perm = self.current.as_ref().map(|(_, p)| p).ok_or_else(|| PrismaError::Internal("no data order".into()))?;
        Ok(perm.f_narrow(0, offset, batch_size)?)
    }
}

/// N(0, std²) truncated at ±2 std (by clamping), from libtorch's global generator.
pub fn trunc_normal(shape: &[i64], std: f64) -> Result<Tensor> {
    Ok(Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?.f_clamp(-2.0, 2.0)?.f_mul_scalar(std)?)
}

pub fn zeros(n: i64) -> Result<Tensor> {
    Ok(Tensor::f_zeros([n], (Kind::Float, Device::Cpu))?)
}

/// Weight 1, bias 0.
pub fn layer_norm_init(d: i64) -> Result<LayerNormWeights> {
    Ok(LayerNormWeights { weight: Tensor::f_ones([d], (Kind::Float, Device::Cpu))?, bias: zeros(d)? })
}

/// A fresh pre-LN block: matrices from `trunc_normal(std)` (drawn in the order w_o, w_qkv, w_in,
/// w_out), biases 0, layer norms identity.
pub fn init_block(d: i64, d_mlp: i64, std: f64) -> Result<BlockWeights> {
    let w_o = trunc_normal(&[d, d], std)?;
    Ok(BlockWeights {
        ln1: layer_norm_init(d)?,
        w_qkv: trunc_normal(&[3 * d, d], std)?,
        b_qkv: Some(zeros(3 * d)?),
        w_o_heads: w_o.shallow_clone(),
        w_o,
        b_o: zeros(d)?,
        ln2: layer_norm_init(d)?,
        w_in: trunc_normal(&[d_mlp, d], std)?,
        b_in: zeros(d_mlp)?,
        w_out: trunc_normal(&[d, d_mlp], std)?,
        b_out: zeros(d)?,
    })
}

/// A block's trainable leaves under `prefix` (decay on the four matrices only).
pub fn block_params(prefix: &str, b: &BlockWeights) -> Result<Vec<(String, Tensor, bool)>> {
    let b_qkv = b.b_qkv.as_ref().ok_or_else(|| PrismaError::Internal("no qkv bias".into()))?;
    Ok([
        ("ln1.w", &b.ln1.weight, false),
        ("ln1.b", &b.ln1.bias, false),
        ("w_qkv", &b.w_qkv, true),
        ("b_qkv", b_qkv, false),
        ("w_o", &b.w_o, true),
        ("b_o", &b.b_o, false),
        ("ln2.w", &b.ln2.weight, false),
        ("ln2.b", &b.ln2.bias, false),
        ("w_in", &b.w_in, true),
        ("b_in", &b.b_in, false),
        ("w_out", &b.w_out, true),
        ("b_out", &b.b_out, false),
    ]
    .into_iter()
    .map(|(n, t, decay)| (format!("{prefix}.{n}"), t.shallow_clone(), decay))
    .collect())
}
