//! What every family loader shares: the load options and the parts it returns, the list of
//! supported families for messages, and the helpers that take tensors by name (layer norms,
//! linears, q/k/v concatenated into one projection, folded layer scale) or read config values that
//! several formats spell alike. Nothing here knows one family's checkpoint names.

use super::pos_embed::{set_image_size, GridResample};
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::text::HookedTextEncoder;
use crate::models::vit::{Activation, LayerNormWeights, ViTConfig, ViTWeights};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// What a user is told their folder could have been.
pub const SUPPORTED: &str = "Hugging Face ViTModel / ViTForImageClassification (ViT, DINO), DeiT, CLIPModel (incl. TinyCLIP), \
Dinov2Model, Dinov2WithRegistersModel, VideoMAE, ViViT (config.json + model.safetensors); open_clip (open_clip_config.json + \
open_clip_model.safetensors); timm ViT (config.json with pretrained_cfg + model.safetensors)";

/// Load-time choices that change the model's geometry.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Run at this input size: position embeddings are resized to its patch grid.
    pub image_size: Option<[i64; 2]>,
    /// Load weights holding NaN or infinities (refused by default: the outputs would be NaN).
    pub allow_nonfinite: bool,
}

/// Parts a family loader fills; `family::load_dir` turns them into a `LoadedModel`.
pub struct Parts {
    pub cfg: ViTConfig,
    pub weights: ViTWeights,
    pub text: Option<HookedTextEncoder>,
    pub labels: Vec<String>,
    pub family: &'static str,
}

/// The folder holds a model of a kind no loader reads.
pub fn unsupported(dir: &Path, found: String) -> PrismaError {
    PrismaError::UnsupportedModel { path: dir.into(), found, supported: SUPPORTED.into() }
}

/// A number or a `[height, width]` pair, as image and patch sizes are written in configs.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

impl OneOrMany {
    pub fn pair(&self) -> Option<[i64; 2]> {
        match self {
            OneOrMany::One(n) => Some([*n, *n]),
            OneOrMany::Many(v) if v.len() == 2 => Some([v[0], v[1]]),
            _ => None,
        }
    }
}

/// A transformers `hidden_act` name.
pub fn parse_activation(name: &str) -> Option<Activation> {
    Some(match name {
        "gelu" | "gelu_python" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "quick_gelu" => Activation::QuickGelu,
        "relu" => Activation::Relu,
        "silu" | "swish" => Activation::Silu,
        _ => return None,
    })
}

/// `id2label` of an HF config as a list, or LABEL_i names when it does not cover every class.
pub fn labels_from_id2label(v: &serde_json::Value, n_classes: i64) -> Vec<String> {
    let mut labels: Vec<(i64, String)> = v
        .get("id2label")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, l)| Some((k.parse::<i64>().ok()?, l.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    labels.sort();
    if labels.len() as i64 == n_classes && labels.iter().enumerate().all(|(i, (k, _))| *k == i as i64) {
        labels.into_iter().map(|(_, l)| l).collect()
    } else {
        (0..n_classes).map(|i| format!("LABEL_{i}")).collect()
    }
}

/// The layer norm `{name}.weight` / `{name}.bias` of width `d`.
pub fn ln(store: &mut TensorStore, name: &str, d: i64) -> Result<LayerNormWeights> {
    Ok(LayerNormWeights { weight: store.take(&format!("{name}.weight"), &[d])?, bias: store.take(&format!("{name}.bias"), &[d])? })
}

/// The linear `{name}.weight` [out, in] and `{name}.bias` [out].
pub fn linear(store: &mut TensorStore, name: &str, out: i64, inp: i64) -> Result<(Tensor, Tensor)> {
    Ok((store.take(&format!("{name}.weight"), &[out, inp])?, store.take(&format!("{name}.bias"), &[out])?))
}

/// Separate query, key and value tensors (in that order, each of `shape`) as the one fused
/// projection the block runs: concatenated along the output dimension.
pub fn take_cat(store: &mut TensorStore, names: [String; 3], shape: &[i64]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(3);
    for name in names {
        parts.push(store.take(&name, shape)?);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// Multiplies an output projection (weight [d, in], bias [d]) by a per-channel layer scale, so the
/// block's hooks see the scaled output without a separate step.
pub fn fold_layer_scale(w: Tensor, b: Tensor, scale: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    match scale {
        None => Ok((w, b)),
        Some(s) => Ok((w.f_mul(&s.f_unsqueeze(1)?)?, b.f_mul(s)?)),
    }
}

/// A CLIP model's parts: its vision tower (a class-token ViT with ln_pre, see
/// `ViTWeights::clip_vision`) and text tower. The vision tower runs at its pretraining size unless
/// the options ask for another, resampled as `how` (its library's way).
pub fn clip_parts(
    mut cfg: ViTConfig,
    mut weights: ViTWeights,
    text: HookedTextEncoder,
    how: GridResample,
    opts: &LoadOptions,
    config_path: &Path,
    family: &'static str,
) -> Result<Parts> {
    if let Some(size) = opts.image_size {
        set_image_size(&mut cfg, &mut weights, size, how, config_path)?;
    }
    Ok(Parts { cfg, weights, text: Some(text), labels: Vec::new(), family })
}

/// A CLIP model's temperature: the checkpoint stores its log.
pub fn logit_scale(store: &mut TensorStore, name: &str) -> Result<f64> {
    Ok(store.take(name, &[])?.f_exp()?.double_value(&[]))
}
