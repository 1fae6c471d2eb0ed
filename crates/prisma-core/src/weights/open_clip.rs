//! open_clip checkpoints as `save_for_hf` writes them: `open_clip_config.json` ({model_cfg,
//! preprocess_cfg}) + `open_clip_model.safetensors`. The only place open_clip tensor names appear.
//! Head counts come from the config (`width / head_width` for vision, `heads` for text), never
//! from a model name.

use super::common::{clip_parts, linear, ln, logit_scale, unsupported, LoadOptions, OneOrMany, Parts};
use super::pos_embed::GridResample;
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::text::{HookedTextEncoder, TextConfig, TextPooling, TextWeights};
use crate::models::vit::{Activation, BlockWeights, ClipVisionSizes, FinalNorm, ViTConfig, ViTWeights};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind};

pub fn open_store(dir: &Path, kind: Kind, device: Device) -> Result<TensorStore> {
    let st = dir.join("open_clip_model.safetensors");
    if st.is_file() {
        return TensorStore::open_file(&st, kind, device);
    }
    let bin = dir.join("open_clip_pytorch_model.bin");
    if bin.is_file() {
        return TensorStore::open_torch_pickle(&bin, kind, device);
    }
    Err(PrismaError::WeightsMissing { file: st, tensor: "(no open_clip_model.safetensors or open_clip_pytorch_model.bin)".into() })
}

#[derive(Deserialize)]
struct OpenClipFile {
    model_cfg: ModelCfg,
}

#[derive(Deserialize)]
struct ModelCfg {
    #[serde(default)]
    quick_gelu: bool,
    vision_cfg: VisionCfg,
    text_cfg: TextCfg,
}

#[derive(Deserialize)]
struct VisionCfg {
    image_size: OneOrMany,
    layers: usize,
    width: i64,
    #[serde(default = "head_width")]
    head_width: i64,
    patch_size: i64,
    #[serde(default = "mlp_ratio")]
    mlp_ratio: f64,
}

#[derive(Deserialize)]
struct TextCfg {
    #[serde(default = "context")]
    context_length: i64,
    #[serde(default = "vocab")]
    vocab_size: i64,
    #[serde(default = "width")]
    width: i64,
    #[serde(default = "heads")]
    heads: i64,
    #[serde(default = "layers")]
    layers: usize,
    #[serde(default = "mlp_ratio")]
    mlp_ratio: f64,
}

// open_clip CLIPVisionCfg / CLIPTextCfg defaults (3.3.0).
fn head_width() -> i64 {
    64
}
fn mlp_ratio() -> f64 {
    4.0
}
fn context() -> i64 {
    77
}
fn vocab() -> i64 {
    49408
}
fn width() -> i64 {
    512
}
fn heads() -> i64 {
    8
}
fn layers() -> usize {
    12
}

/// One `transformer.resblocks.{l}` block (nn.MultiheadAttention with fused in_proj).
fn resblock(store: &mut TensorStore, b: &str, d: i64, d_mlp: i64, n_heads: i64) -> Result<BlockWeights> {
    let name = |n: &str| format!("{b}.{n}");
    let w_o = store.take(&name("attn.out_proj.weight"), &[d, d])?;
    let w_o_heads = BlockWeights::heads_of(&w_o, n_heads, d / n_heads)?;
    let ln1 = ln(store, &name("ln_1"), d)?;
    let w_qkv = store.take(&name("attn.in_proj_weight"), &[3 * d, d])?;
    let b_qkv = Some(store.take(&name("attn.in_proj_bias"), &[3 * d])?);
    let b_o = store.take(&name("attn.out_proj.bias"), &[d])?;
    let ln2 = ln(store, &name("ln_2"), d)?;
    let (w_in, b_in) = linear(store, &name("mlp.c_fc"), d_mlp, d)?;
    let (w_out, b_out) = linear(store, &name("mlp.c_proj"), d, d_mlp)?;
    Ok(BlockWeights { ln1, w_qkv, b_qkv, w_o, w_o_heads, b_o, ln2, w_in, b_in, w_out, b_out })
}

pub fn load(dir: &Path, config_text: &str, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let config_path = dir.join("open_clip_config.json");
    let bad = |reason: String| PrismaError::Config { path: config_path.clone(), reason };
    let raw: OpenClipFile = serde_json::from_str(config_text).map_err(|e| bad(format!("not an open_clip config: {e}")))?;
    let (v, t) = (&raw.model_cfg.vision_cfg, &raw.model_cfg.text_cfg);
    if v.head_width <= 0 || v.width % v.head_width != 0 || t.heads <= 0 || t.width % t.heads != 0 {
        return Err(bad("width must be a multiple of head_width (vision) / heads (text)".into()));
    }
    for name in ["visual.attn_pool.query", "visual.conv1.bias", "visual.trunk.patch_embed.proj.weight"] {
        if store.contains(name) {
            return Err(unsupported(dir, format!("open_clip model with '{name}' (attentional pooling or a timm trunk)")));
        }
    }
    let activation = if raw.model_cfg.quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
    let image_size = v.image_size.pair().ok_or_else(|| bad("vision_cfg.image_size must be a number or [h, w]".into()))?;
    let d = v.width;
    let p = v.patch_size;
    let n_heads = d / v.head_width;
    let d_mlp = (d as f64 * v.mlp_ratio) as i64;
    let sizes = ClipVisionSizes {
        image_size,
        patch_size: p,
        num_channels: 3,
        d_model: d,
        n_heads,
        d_head: v.head_width,
        d_mlp,
        n_layers: v.layers,
        layer_norm_eps: 1e-5,
        activation,
    };
    // open_clip applies ln_post to every token, then takes the class token.
    let cfg = ViTConfig::clip_vision("open_clip CLIP", sizes, FinalNorm::AllTokens);
    let n_pos = cfg.n_pos();
    let patch_weight = store.take("visual.conv1.weight", &[d, 3, p, p])?;
    let class_token = store.take("visual.class_embedding", &[d])?.f_reshape([1, 1, d].as_slice())?;
    let pos_embed = store.take("visual.positional_embedding", &[n_pos, d])?.f_unsqueeze(0)?;
    let ln_pre = ln(store, "visual.ln_pre", d)?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        blocks.push(resblock(store, &format!("visual.transformer.resblocks.{l}"), d, d_mlp, n_heads)?);
    }
    let ln_final = ln(store, "visual.ln_post", d)?;
    let proj_dim = store.shape_of("visual.proj").map_or(0, |s| s[1]);
    // `x @ proj` in open_clip; stored transposed here to share nn.Linear's layout.
    let projection = store.take("visual.proj", &[d, proj_dim])?.f_transpose(0, 1)?.f_contiguous()?;
    let td = t.width;
    let t_mlp = (td as f64 * t.mlp_ratio) as i64;
    let token_embed = store.take("token_embedding.weight", &[t.vocab_size, td])?;
    let text_pos = store.take("positional_embedding", &[t.context_length, td])?;
    let mut text_blocks = Vec::with_capacity(t.layers);
    for l in 0..t.layers {
        text_blocks.push(resblock(store, &format!("transformer.resblocks.{l}"), td, t_mlp, t.heads)?);
    }
    let text_ln = ln(store, "ln_final", td)?;
    let text_projection = store.take("text_projection", &[td, proj_dim])?.f_transpose(0, 1)?.f_contiguous()?;
    let logit_scale = logit_scale(store, "logit_scale")?;
    store.discard_prefix("attn_mask");
    let text = HookedTextEncoder {
        cfg: TextConfig {
            d_model: td,
            n_heads: t.heads,
            d_head: td / t.heads,
            d_mlp: t_mlp,
            n_layers: t.layers,
            layer_norm_eps: 1e-5,
            activation,
            max_positions: t.context_length,
            vocab_size: t.vocab_size,
            pooling: TextPooling::ArgmaxId,
            pad_to: Some(t.context_length),
            mask_padding: false,
        },
        weights: TextWeights {
            token_embed,
            pos_embed: text_pos,
            blocks: text_blocks,
            ln_final: text_ln,
            projection: text_projection,
            logit_scale,
        },
    };
    let weights = ViTWeights::clip_vision(patch_weight, class_token, pos_embed, ln_pre, blocks, ln_final, projection);
    clip_parts(cfg, weights, text, GridResample::BicubicAntialias, opts, &config_path, "open_clip")
}
