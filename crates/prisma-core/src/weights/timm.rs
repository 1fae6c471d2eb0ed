//! timm VisionTransformer checkpoints as `timm.models.save_for_hf` writes them (`config.json` with
//! `architecture`, `global_pool`, optional `model_args`, `pretrained_cfg`; `model.safetensors`).
//! The only place timm tensor names appear.

use super::common::{fold_layer_scale, linear, ln, unsupported, LoadOptions, Parts};
use super::pos_embed::{set_image_size, GridResample};
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::vit::{Activation, BlockWeights, FinalNorm, Head, Pooling, ViTConfig, ViTWeights};
use serde_json::Value;
use std::path::Path;

/// timm writes `architecture` (singular) and `pretrained_cfg`; HF configs have `architectures`.
pub fn is_timm_config(v: &Value) -> bool {
    v.get("architecture").and_then(|a| a.as_str()).is_some() && v.get("pretrained_cfg").is_some()
}

/// Heads of timm's registered ViT sizes (the model functions in timm/models/vision_transformer.py),
/// used only when `model_args` does not say: configs on the hub usually carry no model_args.
fn heads_for(architecture: &str, width: i64) -> Option<i64> {
    let size = architecture.strip_prefix("vit_")?.split('_').next()?;
    let heads = match size {
        "tiny" => 3,
        "small" => 6,
        "medium" => 8,
        "base" => 12,
        "large" | "huge" => 16,
        "giant" | "gigantic" => 16,
        _ => return None,
    };
    // A model_args override of embed_dim without num_heads: keep timm's head width of 64.
    let standard_width = match size {
        "tiny" => 192,
        "small" => 384,
        "medium" => 512,
        "base" => 768,
        "large" => 1024,
        "huge" => 1280,
        "giant" => 1408,
        _ => 1664,
    };
    Some(if width == standard_width { heads } else { (width / 64).max(1) })
}

pub fn load(dir: &Path, v: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let config_path = dir.join("config.json");
    let bad = |reason: String| PrismaError::Config { path: config_path.clone(), reason };
    let architecture = v.get("architecture").and_then(|a| a.as_str()).unwrap_or("").to_string();
    if !architecture.starts_with("vit_") && !architecture.starts_with("deit_") {
        return Err(unsupported(dir, format!("timm '{architecture}'")));
    }
    for name in ["reg_token", "attn_pool.latent", "patch_embed.norm.weight"] {
        if store.contains(name) {
            return Err(unsupported(dir, format!("timm '{architecture}' with '{name}'")));
        }
    }
    let args = v.get("model_args").cloned().unwrap_or(Value::Null);
    let arg_i = |k: &str| args.get(k).and_then(|x| x.as_i64());
    let global_pool = args.get("global_pool").or_else(|| v.get("global_pool")).and_then(|g| g.as_str()).unwrap_or("token").to_string();
    // Shapes from the weights themselves; only the head count needs the config.
    let pw = store
        .shape_of("patch_embed.proj.weight")
        .ok_or_else(|| PrismaError::WeightsMissing { file: dir.join("model.safetensors"), tensor: "patch_embed.proj.weight".into() })?;
    if pw.len() != 4 || pw[2] != pw[3] {
        return Err(bad(format!("patch_embed.proj.weight has shape {pw:?}; expected square patches")));
    }
    let (d, channels, p) = (pw[0], pw[1], pw[2]);
    let n_layers = (0..).take_while(|l| store.contains(&format!("blocks.{l}.norm1.weight"))).count();
    let n_heads = arg_i("num_heads")
        .or_else(|| heads_for(&architecture, d))
        .ok_or_else(|| bad(format!("cannot tell the head count of '{architecture}': add model_args.num_heads to config.json")))?;
    if d % n_heads != 0 {
        return Err(bad(format!("embed_dim {d} is not divisible by num_heads {n_heads}")));
    }
    let d_mlp = store.shape_of("blocks.0.mlp.fc1.weight").map_or(4 * d, |s| s[0]);
    let has_class_token = store.contains("cls_token");
    let pos_shape = store
        .shape_of("pos_embed")
        .ok_or_else(|| PrismaError::WeightsMissing { file: dir.join("model.safetensors"), tensor: "pos_embed".into() })?;
    let n_grid = pos_shape[1] - has_class_token as i64;
    // img_size from model_args, else pretrained_cfg.input_size, else a square grid.
    let image_size = match args.get("img_size") {
        Some(Value::Number(n)) => n.as_i64().map(|n| [n, n]),
        Some(Value::Array(a)) if a.len() == 2 => Some([a[0].as_i64().unwrap_or(0), a[1].as_i64().unwrap_or(0)]),
        _ => v
            .get("pretrained_cfg")
            .and_then(|c| c.get("input_size"))
            .and_then(|s| s.as_array())
            .and_then(|s| Some([s.get(1)?.as_i64()?, s.get(2)?.as_i64()?])),
    }
    .unwrap_or_else(|| {
        let side = (n_grid as f64).sqrt().round() as i64;
        [side * p, side * p]
    });
    if (image_size[0] / p) * (image_size[1] / p) != n_grid {
        return Err(bad(format!("pos_embed {pos_shape:?} does not match image size {}x{} with patch {p}", image_size[0], image_size[1])));
    }
    let fc_norm = store.contains("fc_norm.weight");
    let (pooling, final_norm) = match global_pool.as_str() {
        "token" => (Pooling::ClassToken, FinalNorm::AllTokens),
        "avg" if fc_norm => (Pooling::MeanPatches, FinalNorm::Pooled),
        "avg" => (Pooling::MeanPatches, FinalNorm::AllTokens),
        other => return Err(bad(format!("global_pool '{other}' is not supported (token or avg)"))),
    };
    let n_classes = store.shape_of("head.weight").map_or(0, |s| s[0]);
    let mut cfg = ViTConfig {
        architecture: architecture.clone(),
        image_size,
        patch_size: p,
        num_channels: channels,
        num_frames: 0,
        tubelet_size: 1,
        d_model: d,
        n_heads,
        d_head: d / n_heads,
        d_mlp,
        n_layers,
        layer_norm_eps: 1e-6,
        final_norm_eps: 1e-6,
        activation: Activation::Gelu,
        gated_mlp: false,
        has_class_token,
        has_distillation_token: false,
        n_registers: 0,
        has_ln_pre: store.contains("norm_pre.weight"),
        pooling,
        final_norm,
        n_classes,
    };
    let patch_weight = store.take("patch_embed.proj.weight", &pw)?;
    let patch_bias = store.take_optional("patch_embed.proj.bias", &[d])?;
    let class_token = if has_class_token { Some(store.take("cls_token", &[1, 1, d])?) } else { None };
    let pos_embed = store.take("pos_embed", &pos_shape)?;
    let ln_pre = if cfg.has_ln_pre { Some(ln(store, "norm_pre", d)?) } else { None };
    let mut blocks = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let b = |n: &str| format!("blocks.{l}.{n}");
        let ls1 = store.take_optional(&b("ls1.gamma"), &[d])?;
        let ls2 = store.take_optional(&b("ls2.gamma"), &[d])?;
        let (w_o, b_o) = linear(store, &b("attn.proj"), d, d)?;
        let (w_o, b_o) = fold_layer_scale(w_o, b_o, ls1.as_ref())?;
        let (w_out, b_out) = linear(store, &b("mlp.fc2"), d, d_mlp)?;
        let (w_out, b_out) = fold_layer_scale(w_out, b_out, ls2.as_ref())?;
        let w_o_heads = BlockWeights::heads_of(&w_o, n_heads, d / n_heads)?;
        blocks.push(BlockWeights {
            ln1: ln(store, &b("norm1"), d)?,
            w_qkv: store.take(&b("attn.qkv.weight"), &[3 * d, d])?,
            b_qkv: store.take_optional(&b("attn.qkv.bias"), &[3 * d])?,
            w_o,
            w_o_heads,
            b_o,
            ln2: ln(store, &b("norm2"), d)?,
            w_in: store.take(&b("mlp.fc1.weight"), &[d_mlp, d])?,
            b_in: store.take(&b("mlp.fc1.bias"), &[d_mlp])?,
            w_out,
            b_out,
        });
    }
    let ln_final = if final_norm == FinalNorm::Pooled { ln(store, "fc_norm", d)? } else { ln(store, "norm", d)? };
    let head = if n_classes > 0 {
        let (weight, bias) = linear(store, "head", n_classes, d)?;
        Head::Classifier { weight, bias }
    } else {
        Head::None
    };
    let labels = match v.get("label_names").and_then(|l| l.as_array()) {
        Some(names) if names.len() as i64 == n_classes => names.iter().map(|n| n.as_str().unwrap_or("").to_string()).collect(),
        _ => (0..n_classes).map(|i| format!("LABEL_{i}")).collect(),
    };
    let mut weights = ViTWeights {
        patch_weight,
        patch_bias,
        class_token,
        distillation_token: None,
        register_tokens: None,
        pos_embed,
        ln_pre,
        blocks,
        ln_final,
        head,
    };
    if let Some(size) = opts.image_size {
        set_image_size(&mut cfg, &mut weights, size, GridResample::BicubicAntialias, &config_path)?;
    }
    Ok(Parts { cfg, weights, text: None, labels, family: "timm" })
}
