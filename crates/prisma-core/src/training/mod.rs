//! Training small ViTs from scratch with the same HookedViT forward the analyses use, so a trained
//! model is exactly what later gets inspected. AdamW is written out here (a dozen lines) because
//! tch's optimisers need a VarStore and HookedViT holds plain tensors.
//!
//! Determinism and resumption: the data order of epoch e is a permutation drawn from a generator
//! seeded with (seed, e), so the batch at any step is a function of (seed, step) alone; a checkpoint
//! stores weights, AdamW moments and the step, and resuming continues bit-for-bit where it stopped.

use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookSelection};
use crate::model::{from_f32, to_f32_vec};
use crate::models::vit::{BlockWeights, FinalNorm, ForwardStart, Head, HookedViT, LayerNormWeights, Pooling, ViTConfig, ViTWeights};
use crate::tensor_file::save_safetensors;
use crate::weights::hf_save;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainConfig {
    pub image_size: i64,
    pub patch_size: i64,
    #[serde(default = "three")]
    pub num_channels: i64,
    pub d_model: i64,
    pub n_layers: usize,
    pub n_heads: i64,
    pub d_mlp: i64,
    #[serde(default = "gelu")]
    pub activation: String,
    pub labels: Vec<String>,
    pub batch_size: i64,
    pub total_steps: i64,
    #[serde(default = "lr")]
    pub lr: f64,
    #[serde(default = "wd")]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: i64,
    #[serde(default)]
    pub seed: i64,
}

fn three() -> i64 {
    3
}
fn gelu() -> String {
    "gelu".into()
}
fn lr() -> f64 {
    1e-3
}
fn wd() -> f64 {
    0.05
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub lr: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub n: i64,
}

struct Param {
    name: String,
    value: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub vit: HookedViT,
    params: Vec<Param>,
    pub step: i64,
    /// The current epoch's data order (epoch, permutation): drawn once per epoch, not per step.
    order: Option<(i64, Tensor)>,
    train_x: Tensor,
    train_y: Tensor,
    eval_x: Tensor,
    eval_y: Tensor,
}

fn trunc_normal(shape: &[i64], std: f64) -> Result<Tensor> {
    Ok(Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?.f_clamp(-2.0, 2.0)?.f_mul_scalar(std)?)
}

impl Trainer {
    pub fn new(cfg: TrainConfig, train: (Tensor, Tensor), eval: (Tensor, Tensor)) -> Result<Trainer> {
        let activation = crate::weights::hf::parse_activation(&cfg.activation)
            .ok_or_else(|| PrismaError::Argument(format!("unknown activation '{}'", cfg.activation)))?;
        if cfg.d_model % cfg.n_heads != 0 || cfg.image_size % cfg.patch_size != 0 {
            return Err(PrismaError::Argument("d_model must divide by heads and image size by patch size".into()));
        }
        if cfg.labels.len() < 2 {
            return Err(PrismaError::Argument("need at least two classes".into()));
        }
        let vcfg = ViTConfig {
            architecture: "ViTForImageClassification".into(),
            image_size: [cfg.image_size, cfg.image_size],
            patch_size: cfg.patch_size,
            num_channels: cfg.num_channels,
            num_frames: 0,
            tubelet_size: 1,
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            d_head: cfg.d_model / cfg.n_heads,
            d_mlp: cfg.d_mlp,
            n_layers: cfg.n_layers,
            layer_norm_eps: 1e-12,
            final_norm_eps: 1e-12,
            activation,
            gated_mlp: false,
            has_class_token: true,
            has_distillation_token: false,
            n_registers: 0,
            has_ln_pre: false,
            pooling: Pooling::ClassToken,
            final_norm: FinalNorm::AllTokens,
            n_classes: cfg.labels.len() as i64,
        };
        tch::manual_seed(cfg.seed);
        let d = cfg.d_model;
        let std = 0.02;
        let ln = || -> Result<LayerNormWeights> { Ok(LayerNormWeights { weight: Tensor::f_ones([d], (Kind::Float, Device::Cpu))?, bias: Tensor::f_zeros([d], (Kind::Float, Device::Cpu))? }) };
        let zeros = |n: i64| Tensor::f_zeros([n], (Kind::Float, Device::Cpu));
        let mut blocks = Vec::new();
        for _ in 0..cfg.n_layers {
            let w_o = trunc_normal(&[d, d], std)?;
            blocks.push(BlockWeights {
                ln1: ln()?,
                w_qkv: trunc_normal(&[3 * d, d], std)?,
                b_qkv: Some(zeros(3 * d)?),
                w_o_heads: w_o.shallow_clone(),
                w_o,
                b_o: zeros(d)?,
                ln2: ln()?,
                w_in: trunc_normal(&[cfg.d_mlp, d], std)?,
                b_in: zeros(cfg.d_mlp)?,
                w_out: trunc_normal(&[d, cfg.d_mlp], std)?,
                b_out: zeros(d)?,
            });
        }
        let n_classes = cfg.labels.len() as i64;
        let weights = ViTWeights {
            patch_weight: trunc_normal(&[d, cfg.num_channels, cfg.patch_size, cfg.patch_size], std)?,
            patch_bias: Some(zeros(d)?),
            class_token: Some(trunc_normal(&[1, 1, d], std)?),
            distillation_token: None,
            register_tokens: None,
            pos_embed: trunc_normal(&[1, vcfg.n_pos(), d], std)?,
            ln_pre: None,
            blocks,
            ln_final: ln()?,
            head: Head::Classifier { weight: trunc_normal(&[n_classes, d], std)?, bias: zeros(n_classes)? },
        };
        let vit = HookedViT { cfg: vcfg, weights };
        let (train_x, train_y) = train;
        let (eval_x, eval_y) = eval;
        let mut trainer = Trainer { cfg, vit, params: Vec::new(), step: 0, order: None, train_x, train_y, eval_x, eval_y };
        trainer.check_data()?;
        trainer.collect_params()?;
        Ok(trainer)
    }

    fn check_data(&self) -> Result<()> {
        let c = &self.vit.cfg;
        for (x, y, what) in [(&self.train_x, &self.train_y, "training"), (&self.eval_x, &self.eval_y, "evaluation")] {
            let s = x.size();
            if s.len() != 4 || s[1] != c.num_channels || s[2] != c.image_size[0] || s[3] != c.image_size[1] {
                return Err(PrismaError::Shape(format!("{what} images have shape {s:?}, expected [N, {}, {}, {}]", c.num_channels, c.image_size[0], c.image_size[1])));
            }
            if y.size() != [s[0]] {
                return Err(PrismaError::Shape(format!("{what} labels: {} for {} images", y.size().first().unwrap_or(&0), s[0])));
            }
        }
        if self.train_x.size()[0] < self.cfg.batch_size {
            return Err(PrismaError::Argument("fewer training images than one batch".into()));
        }
        Ok(())
    }

    /// The trainable leaves, in HF-name order (also the checkpoint order).
    fn collect_params(&mut self) -> Result<()> {
        let w = &self.vit.weights;
        let mut list: Vec<(String, Tensor, bool)> = vec![
            ("patch_weight".into(), w.patch_weight.shallow_clone(), true),
            ("patch_bias".into(), w.patch_bias.as_ref().map(|t| t.shallow_clone()).ok_or_else(|| PrismaError::Internal("no patch bias".into()))?, false),
            ("class_token".into(), w.class_token.as_ref().map(|t| t.shallow_clone()).ok_or_else(|| PrismaError::Internal("no class token".into()))?, false),
            ("pos_embed".into(), w.pos_embed.shallow_clone(), false),
        ];
        for (l, b) in w.blocks.iter().enumerate() {
            let b_qkv = b.b_qkv.as_ref().map(|t| t.shallow_clone()).ok_or_else(|| PrismaError::Internal("no qkv bias".into()))?;
            for (n, t, decay) in [
                ("ln1.w", &b.ln1.weight, false),
                ("ln1.b", &b.ln1.bias, false),
                ("w_qkv", &b.w_qkv, true),
                ("b_qkv", &b_qkv, false),
                ("w_o", &b.w_o, true),
                ("b_o", &b.b_o, false),
                ("ln2.w", &b.ln2.weight, false),
                ("ln2.b", &b.ln2.bias, false),
                ("w_in", &b.w_in, true),
                ("b_in", &b.b_in, false),
                ("w_out", &b.w_out, true),
                ("b_out", &b.b_out, false),
            ] {
                list.push((format!("blocks.{l}.{n}"), t.shallow_clone(), decay));
            }
        }
        list.push(("ln_final.w".into(), w.ln_final.weight.shallow_clone(), false));
        list.push(("ln_final.b".into(), w.ln_final.bias.shallow_clone(), false));
        if let Head::Classifier { weight: hw, bias: hb } = &w.head {
            list.push(("head.w".into(), hw.shallow_clone(), true));
            list.push(("head.b".into(), hb.shallow_clone(), false));
        }
        self.params = list
            .into_iter()
            .map(|(name, mut value, decay)| {
                let _ = value.f_requires_grad_(true)?;
                Ok(Param { m: value.f_zeros_like()?, v: value.f_zeros_like()?, name, value, decay })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    pub fn lr_at(&self, step: i64) -> f64 {
        let c = &self.cfg;
        if step < c.warmup_steps {
            return c.lr * (step + 1) as f64 / c.warmup_steps as f64;
        }
        let span = (c.total_steps - c.warmup_steps).max(1) as f64;
        let t = ((step - c.warmup_steps) as f64 / span).min(1.0);
        c.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Indices of the batch at `step`: epoch permutations seeded by (seed, epoch).
    fn batch_indices(&mut self, step: i64) -> Result<Tensor> {
        let n = self.train_x.size()[0];
        let per_epoch = n / self.cfg.batch_size;
        let epoch = step / per_epoch;
        let offset = (step % per_epoch) * self.cfg.batch_size;
        if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            tch::manual_seed(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch));
            self.order = Some((epoch, Tensor::f_randperm(n, (Kind::Int64, Device::Cpu))?));
        }
        let perm = self.order.as_ref().map(|(_, p)| p).ok_or_else(|| PrismaError::Internal("no data order".into()))?;
        Ok(perm.f_narrow(0, offset, self.cfg.batch_size)?)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let none = HookSelection::none();
        let mut ctx = HookCtx::new(&none, &[]);
        Ok(self.vit.forward(ForwardStart::Pixels(x), None, &mut ctx)?.1)
    }

    /// Runs `n` optimisation steps (stopping at total_steps); reports their mean loss and accuracy.
    pub fn train_steps(&mut self, n: i64) -> Result<StepReport> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut loss_sum, mut correct, mut seen, mut done) = (0.0, 0i64, 0i64, 0);
        let mut lr = 0.0;
        while done < n && self.step < self.cfg.total_steps {
            let idx = self.batch_indices(self.step)?;
            let x = self.train_x.f_index_select(0, &idx)?;
            let y = self.train_y.f_index_select(0, &idx)?;
            let logits = self.logits(&x)?;
            let loss = logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0)?;
            for p in &self.params {
                let mut g = p.value.f_grad()?;
                if g.defined() {
                    let _ = g.f_zero_()?;
                }
            }
            loss.f_backward()?;
            lr = self.lr_at(self.step);
            let t = (self.step + 1) as f64;
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
                        let _ = p.value.f_mul_scalar_(1.0 - lr * self.cfg.weight_decay)?;
                    }
                    let update = p.m.f_div_scalar(c1)?.f_div(&p.v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(eps)?)?.f_mul_scalar(lr)?;
                    let _ = p.value.f_sub_(&update)?;
                }
                Ok(())
            })?;
            loss_sum += loss.f_double_value(&[])?;
            correct += logits.f_argmax(-1, false)?.f_eq_tensor(&y)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            seen += y.size()[0];
            done += 1;
            self.step += 1;
        }
        let k = done.max(1) as f64;
        Ok(StepReport { step: self.step, loss: loss_sum / k, accuracy: correct as f64 / seen.max(1) as f64, lr })
    }

    pub fn evaluate(&self) -> Result<EvalReport> {
        tch::no_grad(|| {
            let n = self.eval_x.size()[0];
            let (mut loss_sum, mut correct) = (0.0, 0i64);
            let mut start = 0;
            while start < n {
                let len = (n - start).min(512);
                let x = self.eval_x.f_narrow(0, start, len)?;
                let y = self.eval_y.f_narrow(0, start, len)?;
                let logits = self.logits(&x)?;
                loss_sum += logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0)?.f_double_value(&[])?;
                correct += logits.f_argmax(-1, false)?.f_eq_tensor(&y)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
                start += len;
            }
            Ok(EvalReport { step: self.step, loss: loss_sum / n.max(1) as f64, accuracy: correct as f64 / n.max(1) as f64, n })
        })
    }

    /// Writes the model as a Hugging Face ViTForImageClassification folder.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        let meta = HashMap::from([("prisma_train_step".to_string(), self.step.to_string())]);
        hf_save::save_hf_folder(&self.vit, &self.cfg.labels, dir, meta)
    }

    /// Weights, AdamW moments and the step, in one safetensors file (written atomically).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for p in &self.params {
            for (suffix, t) in [("", &p.value), (".adam_m", &p.m), (".adam_v", &p.v)] {
                let (shape, data) = to_f32_vec(&t.f_detach()?)?;
                tensors.push((format!("{}{suffix}", p.name), shape, data));
            }
        }
        let config = serde_json::to_string(&self.cfg).map_err(|e| PrismaError::Internal(e.to_string()))?;
        let meta = HashMap::from([("step".to_string(), self.step.to_string()), ("train_config".to_string(), config)]);
        save_safetensors(path, &tensors, Some(meta))
    }

    /// Restores a checkpoint written by `save_checkpoint` into a trainer built with the same config.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let bad = |reason: String| PrismaError::TensorFile { path: path.into(), reason };
        let bytes = std::fs::read(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let step: i64 = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no step in the checkpoint".into()))?;
        let saved: TrainConfig = meta
            .get("train_config")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no training config in the checkpoint".into()))?;
        let same = serde_json::to_value(&saved).ok() == serde_json::to_value(&self.cfg).ok();
        if !same {
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
                    let _ = target.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Builds tensors from flat buffers (for the binding).
pub fn dataset(pixels: &[f32], shape: &[i64], labels: &[i64]) -> Result<(Tensor, Tensor)> {
    Ok((from_f32(shape, pixels)?, Tensor::from_slice(labels)))
}
