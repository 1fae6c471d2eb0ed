//! Training a tiny CLIP from scratch on image-caption pairs: a HookedViT vision tower (ln_pre,
//! class-token pooling, pooled post-layernorm, projection) and a HookedTextEncoder (causal +
//! padding mask, pooled at the end-of-text token, projection), scored against each other with a
//! learnable temperature (logit_scale, initialised to ln(1/0.07) and clamped at ln 100 as in CLIP).
//!
//! Loss: the symmetric contrastive loss over the batch (image→text and text→image cross-entropy,
//! averaged). clevr-lite captions repeat (a one-object scene has one of 36 captions), so two pairs in
//! a batch can share a caption; their targets are then spread evenly over every pair with the same
//! caption instead of calling the identical caption a negative. With distinct captions this is
//! exactly CLIP's loss.
//!
//! Captions are encoded with the tokenizer.json of `cfg.tokenizer` through the `tokenizers` crate,
//! padded and truncated the way `Model::tokenize` does it at inference. The same AdamW, schedule,
//! data order and checkpoints as the ViT trainer (see `optim`), so a run is a function of
//! (config, data) and resumes bit-for-bit.

use super::optim::{block_params, init_block, layer_norm_init, trunc_normal, warmup_cosine, EpochOrder, ParamSet};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookSelection};
use crate::models::text::{HookedTextEncoder, TextConfig, TextPooling, TextWeights};
use crate::models::vit::{normalize_rows, ClipVisionSizes, FinalNorm, ForwardStart, Head, HookedViT, ViTConfig, ViTWeights};
use crate::weights::common::parse_activation;
use crate::weights::hf_clip_save::{save_clip_folder, TokenIds};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// ln(1/0.07): CLIP's initial temperature.
pub const LOGIT_SCALE_INIT: f64 = 2.659_260_036_932_778_4;
/// ln(100): CLIP clamps the learned temperature here.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092;

#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ClipTrainConfig {
    pub image_size: i64,
    pub patch_size: i64,
    #[serde(default = "three")]
    #[ts(as = "Option<_>", optional)]
    pub num_channels: i64,
    /// Vision tower.
    pub d_model: i64,
    pub n_layers: usize,
    pub n_heads: i64,
    pub d_mlp: i64,
    /// Text tower.
    pub text_d_model: i64,
    pub text_layers: usize,
    pub text_heads: i64,
    pub text_d_mlp: i64,
    /// Text positions (max tokens per caption, start and end-of-text included).
    pub context_length: i64,
    /// Size of the shared embedding space.
    pub projection_dim: i64,
    #[serde(default = "quick_gelu")]
    #[ts(as = "Option<_>", optional)]
    pub activation: String,
    /// A folder holding the tokenizer.json captions are encoded with (copied into the saved model).
    pub tokenizer: String,
    pub batch_size: i64,
    pub total_steps: i64,
    pub lr: f64,
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
fn quick_gelu() -> String {
    "quick_gelu".into()
}

/// Images [N, C, H, W] (normalised as the saved preprocessor_config.json says) and one caption each.
pub struct CaptionedImages {
    pub pixels: Tensor,
    pub captions: Vec<String>,
}

/// A zero-shot question on the held-out images: image i's answer is `classes[labels[i]]`, asked
/// with the text `prompts[c]` for class c.
#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ZeroShotTask {
    pub name: String,
    pub classes: Vec<String>,
    pub prompts: Vec<String>,
    pub labels: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ClipStepReport {
    pub step: i64,
    pub loss: f64,
    /// Share of images whose best-scoring caption in the batch is their own (or an identical one).
    pub accuracy: f64,
    pub lr: f64,
    /// exp(logit_scale), the current temperature.
    pub logit_scale: f64,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ZeroShotResult {
    pub name: String,
    pub accuracy: f64,
    /// 1 / classes.
    pub chance: f64,
    /// Accuracy of always answering the most common class of these images.
    pub majority: f64,
    pub n: i64,
    pub classes: Vec<String>,
    pub prompts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ClipEvalReport {
    pub step: i64,
    /// Held-out contrastive loss, in batches of `batch_size` (the last one may be smaller).
    pub loss: f64,
    /// Held-out image→caption matching accuracy within those batches.
    pub accuracy: f64,
    pub n: i64,
    pub zero_shot: Vec<ZeroShotResult>,
}

/// Captions/prompts → token ids and mask, padded to the longest (see `models::text::encode_texts`).
pub fn encode_texts(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
    context: i64,
    pad_id: i64,
    strict: bool,
) -> Result<(Tensor, Tensor)> {
    crate::models::text::encode_texts(tokenizer, texts, context, None, pad_id, strict)
}

struct Encoded {
    pixels: Tensor,
    ids: Tensor,
    mask: Tensor,
}

pub struct ClipTrainer {
    pub cfg: ClipTrainConfig,
    pub vit: HookedViT,
    pub text: HookedTextEncoder,
    /// The learnable log temperature (a scalar leaf).
    logit_scale: Tensor,
    tokenizer: tokenizers::Tokenizer,
    token_ids: TokenIds,
    params: ParamSet,
    pub step: i64,
    order: EpochOrder,
    train: Encoded,
    eval: Encoded,
    tasks: Vec<ZeroShotTask>,
}

fn no_hooks<T>(f: impl FnOnce(&mut HookCtx) -> Result<T>) -> Result<T> {
    let none = HookSelection::none();
    let mut ctx = HookCtx::new(&none, &[]);
    f(&mut ctx)
}

impl ClipTrainer {
    pub fn new(cfg: ClipTrainConfig, train: CaptionedImages, eval: CaptionedImages, tasks: Vec<ZeroShotTask>) -> Result<ClipTrainer> {
        let activation =
            parse_activation(&cfg.activation).ok_or_else(|| PrismaError::Argument(format!("unknown activation '{}'", cfg.activation)))?;
        if cfg.d_model % cfg.n_heads != 0 || cfg.text_d_model % cfg.text_heads != 0 || cfg.image_size % cfg.patch_size != 0 {
            return Err(PrismaError::Argument("each tower's width must divide by its heads, and the image size by the patch size".into()));
        }
        if cfg.context_length < 2 || cfg.projection_dim < 1 || cfg.batch_size < 2 {
            return Err(PrismaError::Argument("need a text context of 2+ tokens, a projection of 1+ and batches of 2+ pairs".into()));
        }
        let tok_path = PathBuf::from(&cfg.tokenizer).join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| PrismaError::Config { path: tok_path.clone(), reason: format!("not a tokenizers tokenizer.json: {e}") })?;
        let id = |t: &str| tokenizer.token_to_id(t).map(|i| i as i64);
        let eos = id("<|endoftext|>").ok_or_else(|| PrismaError::Config {
            path: tok_path.clone(),
            reason: "no <|endoftext|> token (a CLIP-style tokenizer is needed)".into(),
        })?;
        let bos = id("<|startoftext|>").ok_or_else(|| PrismaError::Config {
            path: tok_path.clone(),
            reason: "no <|startoftext|> token (a CLIP-style tokenizer is needed)".into(),
        })?;
        // Model::tokenize pads with the tokenizer's pad id, else <|endoftext|>.
        let pad = tokenizer.get_padding().map(|p| p.pad_id as i64).unwrap_or(eos);
        let token_ids = TokenIds { bos, eos, pad };
        let vocab = tokenizer.get_vocab_size(true) as i64;

        let sizes = ClipVisionSizes {
            image_size: [cfg.image_size, cfg.image_size],
            patch_size: cfg.patch_size,
            num_channels: cfg.num_channels,
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            d_head: cfg.d_model / cfg.n_heads,
            d_mlp: cfg.d_mlp,
            n_layers: cfg.n_layers,
            layer_norm_eps: 1e-5,
            activation,
        };
        // Saved as an HF CLIPModel, whose post_layernorm reads the pooled class token.
        let vcfg = ViTConfig::clip_vision("CLIPModel", sizes, FinalNorm::Pooled);
        let tcfg = TextConfig {
            d_model: cfg.text_d_model,
            n_heads: cfg.text_heads,
            d_head: cfg.text_d_model / cfg.text_heads,
            d_mlp: cfg.text_d_mlp,
            n_layers: cfg.text_layers,
            layer_norm_eps: 1e-5,
            activation,
            max_positions: cfg.context_length,
            vocab_size: vocab,
            // What transformers (and weights/hf_clip.rs) do for this eos_token_id.
            pooling: if eos == 2 { TextPooling::ArgmaxId } else { TextPooling::FirstId(eos) },
            pad_to: None,
            mask_padding: true,
        };

        // Initialisation: matrices N(0, 0.02²) (truncated), projections N(0, 1/width), text position
        // embeddings N(0, 0.01²) as CLIP does; layer norms identity, biases zero.
        tch::manual_seed(cfg.seed);
        let (d, td, std) = (cfg.d_model, cfg.text_d_model, 0.02);
        let blocks = (0..cfg.n_layers).map(|_| init_block(d, cfg.d_mlp, std)).collect::<Result<Vec<_>>>()?;
        let vweights = ViTWeights::clip_vision(
            trunc_normal(&[d, cfg.num_channels, cfg.patch_size, cfg.patch_size], std)?,
            trunc_normal(&[1, 1, d], std)?,
            trunc_normal(&[1, vcfg.n_pos(), d], std)?,
            layer_norm_init(d)?,
            blocks,
            layer_norm_init(d)?,
            trunc_normal(&[cfg.projection_dim, d], (d as f64).powf(-0.5))?,
        );
        let text_blocks = (0..cfg.text_layers).map(|_| init_block(td, cfg.text_d_mlp, std)).collect::<Result<Vec<_>>>()?;
        let tweights = TextWeights {
            token_embed: trunc_normal(&[vocab, td], std)?,
            pos_embed: trunc_normal(&[cfg.context_length, td], 0.01)?,
            blocks: text_blocks,
            ln_final: layer_norm_init(td)?,
            projection: trunc_normal(&[cfg.projection_dim, td], (td as f64).powf(-0.5))?,
            logit_scale: LOGIT_SCALE_INIT.exp(),
        };
        let vit = HookedViT { cfg: vcfg, weights: vweights };
        let text = HookedTextEncoder { cfg: tcfg, weights: tweights };
        let logit_scale = Tensor::from_slice(&[LOGIT_SCALE_INIT as f32]).f_reshape([0i64; 0].as_slice())?;
        let params = ParamSet::new(Self::param_list(&vit, &text, &logit_scale)?)?;

        let encode = |data: CaptionedImages, what: &str| -> Result<Encoded> {
            let s = data.pixels.size();
            if s.len() != 4 || s[1] != cfg.num_channels || s[2] != cfg.image_size || s[3] != cfg.image_size {
                return Err(PrismaError::Shape(format!(
                    "{what} images have shape {s:?}, expected [N, {}, {}, {}]",
                    cfg.num_channels, cfg.image_size, cfg.image_size
                )));
            }
            if data.captions.len() as i64 != s[0] {
                return Err(PrismaError::Shape(format!("{what}: {} captions for {} images", data.captions.len(), s[0])));
            }
            let (ids, mask) = encode_texts(&tokenizer, &data.captions, cfg.context_length, pad, true)?;
            Ok(Encoded { pixels: data.pixels, ids, mask })
        };
        let train = encode(train, "training")?;
        let eval = encode(eval, "evaluation")?;
        if train.pixels.size()[0] < cfg.batch_size {
            return Err(PrismaError::Argument("fewer training pairs than one batch".into()));
        }
        let n_eval = eval.pixels.size()[0];
        for t in &tasks {
            if t.classes.len() < 2 || t.prompts.len() != t.classes.len() || t.labels.len() as i64 != n_eval {
                return Err(PrismaError::Argument(format!(
                    "zero-shot task '{}' needs 2+ classes, one prompt per class and one label per held-out image",
                    t.name
                )));
            }
            if let Some(bad) = t.labels.iter().find(|&&l| l < 0 || l >= t.classes.len() as i64) {
                return Err(PrismaError::Argument(format!(
                    "zero-shot task '{}': label {bad} is outside 0..{}",
                    t.name,
                    t.classes.len() - 1
                )));
            }
        }
        Ok(ClipTrainer {
            cfg,
            vit,
            text,
            logit_scale,
            tokenizer,
            token_ids,
            params,
            step: 0,
            order: EpochOrder::default(),
            train,
            eval,
            tasks,
        })
    }

    /// The trainable leaves, in a fixed order (also the checkpoint order). Weight decay applies to
    /// matrices (patch embedding, attention, MLP, projections), not to embeddings, norms, biases or
    /// the temperature.
    fn param_list(vit: &HookedViT, text: &HookedTextEncoder, logit_scale: &Tensor) -> Result<Vec<(String, Tensor, bool)>> {
        let w = &vit.weights;
        let some = |t: &Option<Tensor>, what: &str| {
            t.as_ref().map(Tensor::shallow_clone).ok_or_else(|| PrismaError::Internal(format!("no {what}")))
        };
        let ln_pre = w.ln_pre.as_ref().ok_or_else(|| PrismaError::Internal("no ln_pre".into()))?;
        let Head::Contrastive { projection, .. } = &w.head else {
            return Err(PrismaError::Internal("no contrastive head".into()));
        };
        let mut list: Vec<(String, Tensor, bool)> = vec![
            ("vision.patch_weight".into(), w.patch_weight.shallow_clone(), true),
            ("vision.class_token".into(), some(&w.class_token, "class token")?, false),
            ("vision.pos_embed".into(), w.pos_embed.shallow_clone(), false),
            ("vision.ln_pre.w".into(), ln_pre.weight.shallow_clone(), false),
            ("vision.ln_pre.b".into(), ln_pre.bias.shallow_clone(), false),
        ];
        for (l, b) in w.blocks.iter().enumerate() {
            list.extend(block_params(&format!("vision.blocks.{l}"), b)?);
        }
        list.push(("vision.ln_final.w".into(), w.ln_final.weight.shallow_clone(), false));
        list.push(("vision.ln_final.b".into(), w.ln_final.bias.shallow_clone(), false));
        list.push(("vision.projection".into(), projection.shallow_clone(), true));
        let t = &text.weights;
        list.push(("text.token_embed".into(), t.token_embed.shallow_clone(), false));
        list.push(("text.pos_embed".into(), t.pos_embed.shallow_clone(), false));
        for (l, b) in t.blocks.iter().enumerate() {
            list.extend(block_params(&format!("text.blocks.{l}"), b)?);
        }
        list.push(("text.ln_final.w".into(), t.ln_final.weight.shallow_clone(), false));
        list.push(("text.ln_final.b".into(), t.ln_final.bias.shallow_clone(), false));
        list.push(("text.projection".into(), t.projection.shallow_clone(), true));
        list.push(("logit_scale".into(), logit_scale.shallow_clone(), false));
        Ok(list)
    }

    pub fn lr_at(&self, step: i64) -> f64 {
        warmup_cosine(step, self.cfg.lr, self.cfg.warmup_steps, self.cfg.total_steps)
    }

    /// exp(logit_scale).
    pub fn temperature(&self) -> Result<f64> {
        Ok(self.logit_scale.f_double_value(&[])?.exp())
    }

    fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        no_hooks(|ctx| Ok(self.vit.forward(ForwardStart::Pixels(pixels), None, ctx)?.1))
    }

    fn text_embeds(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        no_hooks(|ctx| self.text.forward(ids, mask, ctx))
    }

    /// Symmetric contrastive loss of a batch and how many images picked their own caption.
    fn contrastive(&self, image: &Tensor, text: &Tensor, ids: &Tensor) -> Result<(Tensor, i64)> {
        let logits = normalize_rows(image)?.f_matmul(&normalize_rows(text)?.f_transpose(0, 1)?)?.f_mul(&self.logit_scale.f_exp()?)?;
        // same[i, j]: pairs i and j have the same caption (ids padded alike, so compare whole rows).
        let same = ids.f_unsqueeze(1)?.f_eq_tensor(&ids.f_unsqueeze(0)?)?.f_all_dim(-1, false)?;
        let target = same.f_to_kind(Kind::Float)?;
        let target = target.f_div(&target.f_sum_dim_intlist([1i64].as_slice(), true, None::<Kind>)?)?;
        // `same` is symmetric, so the same targets serve both directions.
        let ce = |l: &Tensor| -> Result<Tensor> {
            Ok(l.f_log_softmax(1, None::<Kind>)?
                .f_mul(&target)?
                .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?
                .f_mean(None::<Kind>)?
                .f_neg()?)
        };
        let loss = ce(&logits)?.f_add(&ce(&logits.f_transpose(0, 1)?)?)?.f_mul_scalar(0.5)?;
        let best = logits.f_argmax(1, true)?;
        let correct = same.f_gather(1, &best, false)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        Ok((loss, correct))
    }

    /// Runs `n` optimisation steps (stopping at total_steps); reports their mean loss and accuracy.
    pub fn train_steps(&mut self, n: i64) -> Result<ClipStepReport> {
        let (mut loss_sum, mut correct, mut seen, mut done) = (0.0, 0i64, 0i64, 0);
        let mut lr = 0.0;
        while done < n && self.step < self.cfg.total_steps {
            let idx = self.order.batch(self.step, self.train.pixels.size()[0], self.cfg.batch_size, self.cfg.seed)?;
            let x = self.train.pixels.f_index_select(0, &idx)?;
            let ids = self.train.ids.f_index_select(0, &idx)?;
            let mask = self.train.mask.f_index_select(0, &idx)?;
            let image = self.image_embeds(&x)?;
            let text = self.text_embeds(&ids, &mask)?;
            let (loss, ok) = self.contrastive(&image, &text, &ids)?;
            self.params.zero_grad()?;
            loss.f_backward()?;
            lr = self.lr_at(self.step);
            self.params.adamw_step(self.step, lr, self.cfg.weight_decay)?;
            tch::no_grad(|| self.logit_scale.f_clamp_(0.0, LOGIT_SCALE_MAX).map(|_| ()))?;
            loss_sum += loss.f_double_value(&[])?;
            correct += ok;
            seen += self.cfg.batch_size;
            done += 1;
            self.step += 1;
        }
        let logit_scale = self.temperature()?;
        self.text.weights.logit_scale = logit_scale;
        let k = done.max(1) as f64;
        Ok(ClipStepReport { step: self.step, loss: loss_sum / k, accuracy: correct as f64 / seen.max(1) as f64, lr, logit_scale })
    }

    /// Zero-shot logits [N, C] of images against text prompts: exp(logit_scale) × cosine, what a
    /// saved model gives `prisma classify` with those prompts.
    pub fn zero_shot_logits(&self, pixels: &Tensor, prompts: &[String]) -> Result<Tensor> {
        tch::no_grad(|| {
            let (ids, mask) = encode_texts(&self.tokenizer, prompts, self.cfg.context_length, self.token_ids.pad, false)?;
            let classes = normalize_rows(&self.text_embeds(&ids, &mask)?)?.f_mul_scalar(self.temperature()?)?;
            Ok(normalize_rows(&self.image_embeds(pixels)?)?.f_matmul(&classes.f_transpose(0, 1)?)?)
        })
    }

    pub fn evaluate(&self) -> Result<ClipEvalReport> {
        tch::no_grad(|| {
            let e = &self.eval;
            let n = e.pixels.size()[0];
            let (mut loss_sum, mut correct, mut batches) = (0.0, 0i64, 0i64);
            let mut image_embeds = Vec::new();
            let mut start = 0;
            while start < n {
                let len = (n - start).min(self.cfg.batch_size);
                let image = self.image_embeds(&e.pixels.f_narrow(0, start, len)?)?;
                let ids = e.ids.f_narrow(0, start, len)?;
                let text = self.text_embeds(&ids, &e.mask.f_narrow(0, start, len)?)?;
                let (loss, ok) = self.contrastive(&image, &text, &ids)?;
                loss_sum += loss.f_double_value(&[])?;
                correct += ok;
                batches += 1;
                image_embeds.push(normalize_rows(&image)?);
                start += len;
            }
            let images = Tensor::f_cat(&image_embeds, 0)?;
            let mut zero_shot = Vec::with_capacity(self.tasks.len());
            for t in &self.tasks {
                let (ids, mask) = encode_texts(&self.tokenizer, &t.prompts, self.cfg.context_length, self.token_ids.pad, false)?;
                let classes = normalize_rows(&self.text_embeds(&ids, &mask)?)?;
                let predicted = Vec::<i64>::try_from(&images.f_matmul(&classes.f_transpose(0, 1)?)?.f_argmax(1, false)?)
                    .map_err(|err| PrismaError::Internal(err.to_string()))?;
                let hits = predicted.iter().zip(&t.labels).filter(|(p, l)| p == l).count();
                let mut counts = vec![0usize; t.classes.len()];
                for &l in &t.labels {
                    counts[l as usize] += 1;
                }
                let n = t.labels.len().max(1) as f64;
                zero_shot.push(ZeroShotResult {
                    name: t.name.clone(),
                    accuracy: hits as f64 / n,
                    chance: 1.0 / t.classes.len() as f64,
                    majority: counts.iter().copied().max().unwrap_or(0) as f64 / n,
                    n: t.labels.len() as i64,
                    classes: t.classes.clone(),
                    prompts: t.prompts.clone(),
                });
            }
            Ok(ClipEvalReport {
                step: self.step,
                loss: loss_sum / batches.max(1) as f64,
                accuracy: correct as f64 / n.max(1) as f64,
                n,
                zero_shot,
            })
        })
    }

    /// Writes the model as a Hugging Face CLIPModel folder with its tokenizer. No metadata beyond
    /// `format`: safetensors writes metadata in hash order, and one key keeps a rerun's file
    /// byte-identical.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        let log_scale = self.logit_scale.f_double_value(&[])? as f32;
        save_clip_folder(&self.vit, &self.text, log_scale, self.token_ids, Path::new(&self.cfg.tokenizer), dir, HashMap::new())
    }

    /// Weights, AdamW moments and the step, in one safetensors file (written atomically).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        self.params.save_checkpoint(path, self.step, &self.cfg)
    }

    /// Restores a checkpoint written by `save_checkpoint` into a trainer built with the same config.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.step = self.params.load_checkpoint(path, &self.cfg)?;
        self.text.weights.logit_scale = self.temperature()?;
        Ok(())
    }
}

/// Builds images from a flat buffer (for the binding).
pub fn captioned(pixels: &[f32], shape: &[i64], captions: Vec<String>) -> Result<CaptionedImages> {
    Ok(CaptionedImages { pixels: crate::model::from_f32(shape, pixels)?, captions })
}
