//! Training small models from scratch with the same hooked forwards the analyses use, so a trained
//! model is exactly what later gets inspected. This file is the ViT classifier trainer; `clip` is the
//! contrastive image-text trainer; `optim` holds what they share (AdamW, written out because tch's
//! optimisers need a VarStore and the hooked models hold plain tensors; the schedule; the data
//! order; checkpoints; initialisation).
//!
//! Determinism and resumption: the data order of epoch e is a permutation drawn from a generator
//! seeded with (seed, e), so the batch at any step is a function of (seed, step) alone; a checkpoint
//! stores weights, AdamW moments and the step, and resuming continues bit-for-bit where it stopped.

pub mod clip;
pub mod optim;

use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookSelection};
use crate::model::from_f32;
use crate::models::vit::{FinalNorm, ForwardStart, Head, HookedViT, Pooling, ViTConfig, ViTWeights};
use crate::weights::hf_save;
use optim::{block_params, init_block, layer_norm_init, trunc_normal, warmup_cosine, zeros, EpochOrder, ParamSet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TrainConfig {
    pub image_size: i64,
    pub patch_size: i64,
    #[serde(default = "three")]
    #[ts(as = "Option<_>", optional)]
    pub num_channels: i64,
    pub d_model: i64,
    pub n_layers: usize,
    pub n_heads: i64,
    pub d_mlp: i64,
    #[serde(default = "gelu")]
    #[ts(as = "Option<_>", optional)]
    pub activation: String,
    pub labels: Vec<String>,
    pub batch_size: i64,
    pub total_steps: i64,
    #[serde(default = "lr")]
    #[ts(as = "Option<_>", optional)]
    pub lr: f64,
    #[serde(default = "wd")]
    #[ts(as = "Option<_>", optional)]
    pub weight_decay: f64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub warmup_steps: i64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
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

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub lr: f64,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub n: i64,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub vit: HookedViT,
    params: ParamSet,
    pub step: i64,
    order: EpochOrder,
    train_x: Tensor,
    train_y: Tensor,
    eval_x: Tensor,
    eval_y: Tensor,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, train: (Tensor, Tensor), eval: (Tensor, Tensor)) -> Result<Trainer> {
        let activation = crate::weights::common::parse_activation(&cfg.activation)
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
        let blocks = (0..cfg.n_layers).map(|_| init_block(d, cfg.d_mlp, std)).collect::<Result<Vec<_>>>()?;
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
            ln_final: layer_norm_init(d)?,
            head: Head::Classifier { weight: trunc_normal(&[n_classes, d], std)?, bias: zeros(n_classes)? },
        };
        let vit = HookedViT { cfg: vcfg, weights };
        let (train_x, train_y) = train;
        let (eval_x, eval_y) = eval;
        let params = ParamSet::new(Self::param_list(&vit.weights)?)?;
        let trainer = Trainer { cfg, vit, params, step: 0, order: EpochOrder::default(), train_x, train_y, eval_x, eval_y };
        trainer.check_data()?;
        Ok(trainer)
    }

    fn check_data(&self) -> Result<()> {
        let c = &self.vit.cfg;
        for (x, y, what) in [(&self.train_x, &self.train_y, "training"), (&self.eval_x, &self.eval_y, "evaluation")] {
            let s = x.size();
            if s.len() != 4 || s[1] != c.num_channels || s[2] != c.image_size[0] || s[3] != c.image_size[1] {
                return Err(PrismaError::Shape(format!(
                    "{what} images have shape {s:?}, expected [N, {}, {}, {}]",
                    c.num_channels, c.image_size[0], c.image_size[1]
                )));
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
    fn param_list(w: &ViTWeights) -> Result<Vec<(String, Tensor, bool)>> {
        let mut list: Vec<(String, Tensor, bool)> = vec![
            ("patch_weight".into(), w.patch_weight.shallow_clone(), true),
            (
                "patch_bias".into(),
                w.patch_bias.as_ref().map(|t| t.shallow_clone()).ok_or_else(|| PrismaError::Internal("no patch bias".into()))?,
                false,
            ),
            (
                "class_token".into(),
                w.class_token.as_ref().map(|t| t.shallow_clone()).ok_or_else(|| PrismaError::Internal("no class token".into()))?,
                false,
            ),
            ("pos_embed".into(), w.pos_embed.shallow_clone(), false),
        ];
        for (l, b) in w.blocks.iter().enumerate() {
            list.extend(block_params(&format!("blocks.{l}"), b)?);
        }
        list.push(("ln_final.w".into(), w.ln_final.weight.shallow_clone(), false));
        list.push(("ln_final.b".into(), w.ln_final.bias.shallow_clone(), false));
        if let Head::Classifier { weight: hw, bias: hb } = &w.head {
            list.push(("head.w".into(), hw.shallow_clone(), true));
            list.push(("head.b".into(), hb.shallow_clone(), false));
        }
        Ok(list)
    }

    pub fn lr_at(&self, step: i64) -> f64 {
        warmup_cosine(step, self.cfg.lr, self.cfg.warmup_steps, self.cfg.total_steps)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let none = HookSelection::none();
        let mut ctx = HookCtx::new(&none, &[]);
        Ok(self.vit.forward(ForwardStart::Pixels(x), None, &mut ctx)?.1)
    }

    /// Runs `n` optimisation steps (stopping at total_steps); reports their mean loss and accuracy.
    pub fn train_steps(&mut self, n: i64) -> Result<StepReport> {
        let (mut loss_sum, mut correct, mut seen, mut done) = (0.0, 0i64, 0i64, 0);
        let mut lr = 0.0;
        while done < n && self.step < self.cfg.total_steps {
            let idx = self.order.batch(self.step, self.train_x.size()[0], self.cfg.batch_size, self.cfg.seed)?;
            let x = self.train_x.f_index_select(0, &idx)?;
            let y = self.train_y.f_index_select(0, &idx)?;
            let logits = self.logits(&x)?;
            let loss = logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0)?;
            self.params.zero_grad()?;
            loss.f_backward()?;
            lr = self.lr_at(self.step);
            self.params.adamw_step(self.step, lr, self.cfg.weight_decay)?;
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
        self.params.save_checkpoint(path, self.step, &self.cfg)
    }

    /// Restores a checkpoint written by `save_checkpoint` into a trainer built with the same config.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.step = self.params.load_checkpoint(path, &self.cfg)?;
        Ok(())
    }
}

/// Builds tensors from flat buffers (for the binding).
pub fn dataset(pixels: &[f32], shape: &[i64], labels: &[i64]) -> Result<(Tensor, Tensor)> {
    Ok((from_f32(shape, pixels)?, Tensor::from_slice(labels)))
}
