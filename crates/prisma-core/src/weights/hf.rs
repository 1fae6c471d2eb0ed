//! Hugging Face vision encoders with the `encoder.layer.{l}` layout: ViT / DINO (`ViTModel`,
//! `ViTForImageClassification`), DeiT, DINOv2 (with and without registers, layer scale, SwiGLU),
//! VideoMAE and ViViT. The only place their checkpoint names appear.

use super::family::{labels_from_id2label, LoadOptions, Parts};
use super::pos_embed::{set_image_size, sinusoid_table, GridResample};
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::vit::{Activation, BlockWeights, FinalNorm, Head, LayerNormWeights, Pooling, ViTConfig, ViTWeights};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use tch::Tensor;

/// The architectures this loader reads (config.json `architectures[0]`); empty = the bare model.
pub const ARCHITECTURES: &[&str] = &[
    "ViTModel",
    "ViTForImageClassification",
    "DeiTModel",
    "DeiTForImageClassification",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
    "VideoMAEModel",
    "VideoMAEForVideoClassification",
    "VivitModel",
    "VivitForVideoClassification",
];

pub fn accepts(model_type: &str, architecture: &str) -> bool {
    matches!(model_type, "vit" | "deit" | "dinov2" | "dinov2_with_registers" | "videomae" | "vivit")
        && (architecture.is_empty() || ARCHITECTURES.contains(&architecture))
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

impl OneOrMany {
    pub(crate) fn pair(&self) -> Option<[i64; 2]> {
        match self {
            OneOrMany::One(n) => Some([*n, *n]),
            OneOrMany::Many(v) if v.len() == 2 => Some([v[0], v[1]]),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct HfVitConfig {
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: i64,
    num_hidden_layers: usize,
    num_attention_heads: i64,
    intermediate_size: Option<i64>,
    mlp_ratio: Option<f64>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    image_size: OneOrMany,
    patch_size: Option<OneOrMany>,
    #[serde(default = "default_channels")]
    num_channels: i64,
    #[serde(default = "default_true")]
    qkv_bias: bool,
    #[serde(default)]
    use_swiglu_ffn: bool,
    #[serde(default)]
    num_register_tokens: i64,
    num_frames: Option<i64>,
    tubelet_size: Option<OneOrMany>,
    #[serde(default = "default_true")]
    use_mean_pooling: bool,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_channels() -> i64 {
    3
}
fn default_true() -> bool {
    true
}

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

pub(crate) fn ln(store: &mut TensorStore, name: &str, d: i64) -> Result<LayerNormWeights> {
    Ok(LayerNormWeights { weight: store.take(&format!("{name}.weight"), &[d])?, bias: store.take(&format!("{name}.bias"), &[d])? })
}

/// Multiplies an output projection (weight [d, in], bias [d]) by a per-channel layer scale, so the
/// block's hooks see the scaled output without a separate step.
pub(crate) fn fold_layer_scale(w: Tensor, b: Tensor, scale: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    match scale {
        None => Ok((w, b)),
        Some(s) => Ok((w.f_mul(&s.f_unsqueeze(1)?)?, b.f_mul(s)?)),
    }
}

/// Reads `preprocessor_config.json`'s crop size (DINOv2 runs at it, not at its pretraining grid).
fn preprocessor_crop(dir: &Path) -> Option<[i64; 2]> {
    let text = std::fs::read_to_string(dir.join("preprocessor_config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let crop = v.get("crop_size")?;
    if let Some(n) = crop.as_i64() {
        return Some([n, n]);
    }
    Some([crop.get("height")?.as_i64()?, crop.get("width")?.as_i64()?])
}

pub fn load(dir: &Path, value: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let config_path = dir.join("config.json");
    let bad = |reason: String| PrismaError::Config { path: config_path.clone(), reason };
    let raw = HfVitConfig::deserialize(value).map_err(|e| bad(format!("not a ViT-family config: {e}")))?;
    let model_type = raw.model_type.as_str();
    let architecture = raw.architectures.first().cloned().unwrap_or_default();
    let (family, backbone) = match model_type {
        "deit" => ("deit", "deit"),
        "dinov2" | "dinov2_with_registers" => ("dinov2", "dinov2"),
        "videomae" => ("videomae", "videomae"),
        "vivit" => ("vivit", "vivit"),
        _ => ("vit", "vit"),
    };
    let is_dinov2 = family == "dinov2";
    let is_video = matches!(family, "videomae" | "vivit");
    // Task models nest the backbone under `vit.` / `deit.` / …; bare models have no prefix.
    let prefix = if store.names().any(|n| n.starts_with(&format!("{backbone}."))) { format!("{backbone}.") } else { String::new() };
    if architecture == "DeiTForImageClassificationWithTeacher" || store.contains("cls_classifier.weight") {
        return Err(PrismaError::UnsupportedModel {
            path: dir.into(),
            found: "DeiTForImageClassificationWithTeacher (two heads)".into(),
            supported: super::family::SUPPORTED.into(),
        });
    }
    let activation = parse_activation(&raw.hidden_act).ok_or_else(|| bad(format!("unsupported hidden_act '{}'", raw.hidden_act)))?;
    let d = raw.hidden_size;
    if d % raw.num_attention_heads != 0 {
        return Err(bad(format!("hidden_size {d} is not divisible by num_attention_heads {}", raw.num_attention_heads)));
    }
    let n_heads = raw.num_attention_heads;
    let (patch, tubelet) = match (&raw.tubelet_size, &raw.patch_size, family) {
        (Some(OneOrMany::Many(t)), _, "vivit") if t.len() == 3 && t[1] == t[2] => (t[1], t[0]),
        (_, Some(p), _) => match p.pair() {
            Some([a, b]) if a == b => (a, raw.tubelet_size.as_ref().and_then(|t| t.pair()).map_or(1, |t| t[0])),
            _ => return Err(bad("non-square patches are not supported".into())),
        },
        _ => return Err(bad("no patch_size".into())),
    };
    let num_frames = if is_video { raw.num_frames.ok_or_else(|| bad("video config without num_frames".into()))? } else { 0 };
    let image_size = raw.image_size.pair().ok_or_else(|| bad("image_size must be a number or [height, width]".into()))?;
    let p = |name: &str| format!("{prefix}{name}");
    let emb = |name: &str| format!("{prefix}embeddings.{name}");
    let classifier = store.contains("classifier.weight");
    if is_dinov2 && classifier {
        return Err(PrismaError::UnsupportedModel {
            path: dir.into(),
            found: format!("{architecture} (classifier on [class; mean of patches])"),
            supported: super::family::SUPPORTED.into(),
        });
    }
    let n_classes = if classifier { store.shape_of("classifier.weight").map_or(0, |s| s[0]) } else { 0 };
    let labels = if classifier { labels_from_id2label(value, n_classes) } else { Vec::new() };
    let has_class_token = store.contains(&emb("cls_token"));
    let has_distillation_token = family == "deit";
    let n_registers = if model_type == "dinov2_with_registers" { raw.num_register_tokens } else { 0 };
    // VideoMAE's classifier pools (mean) then applies fc_norm; without fc_norm it reads token 0.
    let fc_norm = store.contains("fc_norm.weight");
    let (pooling, final_norm, final_norm_eps) = if family == "videomae" && fc_norm {
        (Pooling::MeanPatches, FinalNorm::Pooled, 1e-5)
    } else {
        (Pooling::ClassToken, FinalNorm::AllTokens, raw.layer_norm_eps)
    };
    if family == "videomae" && !raw.use_mean_pooling && !store.contains(&p("layernorm.weight")) {
        return Err(bad("VideoMAE without fc_norm or a final layernorm".into()));
    }
    let patch_weight_shape: Vec<i64> =
        if is_video { vec![d, raw.num_channels, tubelet, patch, patch] } else { vec![d, raw.num_channels, patch, patch] };
    let patch_weight = store.take(&emb("patch_embeddings.projection.weight"), &patch_weight_shape)?;
    let patch_bias = store.take_optional(&emb("patch_embeddings.projection.bias"), &[d])?;
    let class_token = if has_class_token { Some(store.take(&emb("cls_token"), &[1, 1, d])?) } else { None };
    let distillation_token = if has_distillation_token { Some(store.take(&emb("distillation_token"), &[1, 1, d])?) } else { None };
    let register_tokens = if n_registers > 0 { Some(store.take(&emb("register_tokens"), &[1, n_registers, d])?) } else { None };
    store.discard_prefix(&emb("mask_token"));
    let n_table_prefix = has_class_token as i64 + has_distillation_token as i64;
    // The learned table's own grid: DINOv2 stores its pretraining grid (e.g. 37x37 for 518 px).
    let (table, table_grid) = if family == "videomae" {
        let n = (num_frames / tubelet) * (image_size[0] / patch) * (image_size[1] / patch);
        (
            sinusoid_table(n, d)?.f_to_kind(patch_weight.kind())?.f_to_device(patch_weight.device())?,
            [image_size[0] / patch, image_size[1] / patch],
        )
    } else {
        let name = emb("position_embeddings");
        let shape = store
            .shape_of(&name)
            .ok_or_else(|| PrismaError::WeightsMissing { file: dir.join("model.safetensors"), tensor: name.clone() })?;
        let n_grid = shape.get(1).copied().unwrap_or(0) - n_table_prefix;
        let grid = if is_dinov2 {
            let side = (n_grid as f64).sqrt().round() as i64;
            [side, side]
        } else {
            [image_size[0] / patch, image_size[1] / patch]
        };
        let slices = if is_video { num_frames / tubelet } else { 1 };
        if grid[0] * grid[1] * slices != n_grid {
            return Err(PrismaError::WeightsShape {
                file: dir.join("model.safetensors"),
                tensor: name,
                expected: vec![1, n_table_prefix + grid[0] * grid[1] * slices, d],
                found: shape,
            });
        }
        (store.take(&name, &shape)?, grid)
    };
    // Registers get no position embedding: zero rows keep the table in token order.
    let pos_embed = if n_registers > 0 {
        let zeros = Tensor::f_zeros([1, n_registers, d].as_slice(), (table.kind(), table.device()))?;
        Tensor::f_cat(
            &[table.f_narrow(1, 0, n_table_prefix)?, zeros, table.f_narrow(1, n_table_prefix, table.size()[1] - n_table_prefix)?],
            1,
        )?
    } else {
        table
    };
    let d_mlp = if raw.use_swiglu_ffn {
        let name = p("encoder.layer.0.mlp.weights_in.weight");
        store
            .shape_of(&name)
            .map(|s| s[0] / 2)
            .ok_or_else(|| PrismaError::WeightsMissing { file: dir.join("model.safetensors"), tensor: name })?
    } else if let Some(n) = raw.intermediate_size {
        n
    } else {
        (d as f64 * raw.mlp_ratio.unwrap_or(4.0)) as i64
    };
    let mut cfg = ViTConfig {
        architecture: if architecture.is_empty() { model_type.to_string() } else { architecture.clone() },
        image_size: [table_grid[0] * patch, table_grid[1] * patch],
        patch_size: patch,
        num_channels: raw.num_channels,
        num_frames,
        tubelet_size: if is_video { tubelet } else { 1 },
        d_model: d,
        n_heads,
        d_head: d / n_heads,
        d_mlp,
        n_layers: raw.num_hidden_layers,
        layer_norm_eps: raw.layer_norm_eps,
        final_norm_eps,
        activation: if raw.use_swiglu_ffn { Activation::Silu } else { activation },
        gated_mlp: raw.use_swiglu_ffn,
        has_class_token,
        has_distillation_token,
        n_registers,
        has_ln_pre: false,
        pooling,
        final_norm,
        n_classes,
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = |name: &str| p(&format!("encoder.layer.{l}.{name}"));
        let (ln1_name, ln2_name) = if is_dinov2 { ("norm1", "norm2") } else { ("layernorm_before", "layernorm_after") };
        let ln1 = ln(store, &b(ln1_name), d)?;
        let mut w = Vec::new();
        for proj in ["query", "key", "value"] {
            w.push(store.take(&b(&format!("attention.attention.{proj}.weight")), &[d, d])?);
        }
        let b_qkv = if family == "videomae" {
            // VideoMAE: q and v biases, none for k.
            match (
                store.take_optional(&b("attention.attention.q_bias"), &[d])?,
                store.take_optional(&b("attention.attention.v_bias"), &[d])?,
            ) {
                (Some(q), Some(v)) => Some(Tensor::f_cat(&[q.shallow_clone(), q.f_zeros_like()?, v], 0)?),
                _ => None,
            }
        } else if raw.qkv_bias {
            let mut bias = Vec::new();
            for proj in ["query", "key", "value"] {
                bias.push(store.take(&b(&format!("attention.attention.{proj}.bias")), &[d])?);
            }
            Some(Tensor::f_cat(&bias, 0)?)
        } else {
            None
        };
        let w_qkv = Tensor::f_cat(&w, 0)?;
        let ls1 = if is_dinov2 { Some(store.take(&b("layer_scale1.lambda1"), &[d])?) } else { None };
        let ls2 = if is_dinov2 { Some(store.take(&b("layer_scale2.lambda1"), &[d])?) } else { None };
        let (w_o, b_o) = fold_layer_scale(
            store.take(&b("attention.output.dense.weight"), &[d, d])?,
            store.take(&b("attention.output.dense.bias"), &[d])?,
            ls1.as_ref(),
        )?;
        let w_o_heads = BlockWeights::heads_of(&w_o, n_heads, cfg.d_head)?;
        let ln2 = ln(store, &b(ln2_name), d)?;
        let (w_in, b_in, w_out, b_out) = if raw.use_swiglu_ffn {
            (
                store.take(&b("mlp.weights_in.weight"), &[2 * d_mlp, d])?,
                store.take(&b("mlp.weights_in.bias"), &[2 * d_mlp])?,
                store.take(&b("mlp.weights_out.weight"), &[d, d_mlp])?,
                store.take(&b("mlp.weights_out.bias"), &[d])?,
            )
        } else if is_dinov2 {
            (
                store.take(&b("mlp.fc1.weight"), &[d_mlp, d])?,
                store.take(&b("mlp.fc1.bias"), &[d_mlp])?,
                store.take(&b("mlp.fc2.weight"), &[d, d_mlp])?,
                store.take(&b("mlp.fc2.bias"), &[d])?,
            )
        } else {
            (
                store.take(&b("intermediate.dense.weight"), &[d_mlp, d])?,
                store.take(&b("intermediate.dense.bias"), &[d_mlp])?,
                store.take(&b("output.dense.weight"), &[d, d_mlp])?,
                store.take(&b("output.dense.bias"), &[d])?,
            )
        };
        let (w_out, b_out) = fold_layer_scale(w_out, b_out, ls2.as_ref())?;
        blocks.push(BlockWeights { ln1, w_qkv, b_qkv, w_o, w_o_heads, b_o, ln2, w_in, b_in, w_out, b_out });
    }
    let ln_final = if final_norm == FinalNorm::Pooled { ln(store, "fc_norm", d)? } else { ln(store, &p("layernorm"), d)? };
    let head = if classifier {
        Head::Classifier { weight: store.take("classifier.weight", &[n_classes, d])?, bias: store.take("classifier.bias", &[n_classes])? }
    } else {
        Head::None
    };
    // The pooler (dense + tanh on the class token) feeds no output we expose.
    store.discard_prefix(&p("pooler."));
    let mut weights = ViTWeights {
        patch_weight,
        patch_bias,
        class_token,
        distillation_token,
        register_tokens,
        pos_embed,
        ln_pre: None,
        blocks,
        ln_final,
        head,
    };
    let how = if model_type == "dinov2_with_registers" { GridResample::BicubicAntialias } else { GridResample::Bicubic };
    let size = opts.image_size.or_else(|| if is_dinov2 { preprocessor_crop(dir) } else { None }).unwrap_or(image_size);
    set_image_size(&mut cfg, &mut weights, size, how, &config_path)?;
    Ok(Parts { cfg, weights, text: None, labels, family })
}
