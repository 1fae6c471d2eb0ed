//! Hugging Face `CLIPModel` folders (openai/clip-vit-*, wkcn/TinyCLIP-*): both towers, the
//! projections and the logit scale. The only place HF CLIP checkpoint names appear.

use super::common::{clip_parts, linear, ln, logit_scale, parse_activation, take_cat, LoadOptions, OneOrMany, Parts};
use super::pos_embed::GridResample;
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::text::{HookedTextEncoder, TextConfig, TextPooling, TextWeights};
use crate::models::vit::{BlockWeights, ClipVisionSizes, FinalNorm, ViTConfig, ViTWeights};
use serde::Deserialize;
use std::path::Path;

pub fn accepts(model_type: &str, architecture: &str) -> bool {
    model_type == "clip" && (architecture.is_empty() || architecture == "CLIPModel")
}

#[derive(Deserialize)]
struct ClipConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vision_config: VisionConfig,
    text_config: TextCfg,
}

#[derive(Deserialize)]
struct VisionConfig {
    #[serde(default = "d768")]
    hidden_size: i64,
    #[serde(default = "n3072")]
    intermediate_size: i64,
    #[serde(default = "n12")]
    num_hidden_layers: usize,
    #[serde(default = "h12")]
    num_attention_heads: i64,
    #[serde(default = "n3")]
    num_channels: i64,
    #[serde(default = "n224")]
    image_size: OneOrMany,
    #[serde(default = "n32")]
    patch_size: i64,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

#[derive(Deserialize)]
struct TextCfg {
    #[serde(default = "d512")]
    hidden_size: i64,
    #[serde(default = "n2048")]
    intermediate_size: i64,
    #[serde(default = "n12")]
    num_hidden_layers: usize,
    #[serde(default = "n8")]
    num_attention_heads: i64,
    #[serde(default = "n77")]
    max_position_embeddings: i64,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "eos")]
    eos_token_id: i64,
}

// CLIPVisionConfig / CLIPTextConfig defaults (transformers 4.57).
fn d768() -> i64 {
    768
}
fn d512() -> i64 {
    512
}
fn n3072() -> i64 {
    3072
}
fn n2048() -> i64 {
    2048
}
fn n12() -> usize {
    12
}
fn h12() -> i64 {
    12
}
fn n8() -> i64 {
    8
}
fn n3() -> i64 {
    3
}
fn n224() -> OneOrMany {
    OneOrMany::One(224)
}
fn n32() -> i64 {
    32
}
fn n77() -> i64 {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn eos() -> i64 {
    49407
}

/// One `encoder.layers.{l}` block of either tower.
fn clip_block(store: &mut TensorStore, b: &str, d: i64, d_mlp: i64, n_heads: i64) -> Result<BlockWeights> {
    let name = |n: &str| format!("{b}.{n}");
    let ln1 = ln(store, &name("layer_norm1"), d)?;
    let qkv = |what: &str| ["q_proj", "k_proj", "v_proj"].map(|proj| name(&format!("self_attn.{proj}.{what}")));
    let w_qkv = take_cat(store, qkv("weight"), &[d, d])?;
    let b_qkv = Some(take_cat(store, qkv("bias"), &[d])?);
    let (w_o, b_o) = linear(store, &name("self_attn.out_proj"), d, d)?;
    let w_o_heads = BlockWeights::heads_of(&w_o, n_heads, d / n_heads)?;
    let ln2 = ln(store, &name("layer_norm2"), d)?;
    let (w_in, b_in) = linear(store, &name("mlp.fc1"), d_mlp, d)?;
    let (w_out, b_out) = linear(store, &name("mlp.fc2"), d, d_mlp)?;
    Ok(BlockWeights { ln1, w_qkv, b_qkv, w_o, w_o_heads, b_o, ln2, w_in, b_in, w_out, b_out })
}

pub fn load(dir: &Path, value: &serde_json::Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let config_path = dir.join("config.json");
    let bad = |reason: String| PrismaError::Config { path: config_path.clone(), reason };
    let raw = ClipConfig::deserialize(value).map_err(|e| bad(format!("not a CLIP config: {e}")))?;
    let (v, t) = (&raw.vision_config, &raw.text_config);
    for (what, d, h) in [("vision", v.hidden_size, v.num_attention_heads), ("text", t.hidden_size, t.num_attention_heads)] {
        if h <= 0 || d % h != 0 {
            return Err(bad(format!("{what} hidden_size {d} is not divisible by num_attention_heads {h}")));
        }
    }
    let act = |name: &str| parse_activation(name).ok_or_else(|| bad(format!("unsupported hidden_act '{name}'")));
    let image_size = v.image_size.pair().ok_or_else(|| bad("vision image_size must be a number or [h, w]".into()))?;
    let d = v.hidden_size;
    let p = v.patch_size;
    let architecture = raw.architectures.first().map_or("CLIPModel", String::as_str);
    let sizes = ClipVisionSizes {
        image_size,
        patch_size: p,
        num_channels: v.num_channels,
        d_model: d,
        n_heads: v.num_attention_heads,
        d_head: d / v.num_attention_heads,
        d_mlp: v.intermediate_size,
        n_layers: v.num_hidden_layers,
        layer_norm_eps: v.layer_norm_eps,
        activation: act(&v.hidden_act)?,
    };
    // HF CLIP applies post_layernorm to the pooled class token only.
    let cfg = ViTConfig::clip_vision(architecture, sizes, FinalNorm::Pooled);
    let vm = |n: &str| format!("vision_model.{n}");
    let n_pos = cfg.n_pos();
    let patch_weight = store.take(&vm("embeddings.patch_embedding.weight"), &[d, cfg.num_channels, p, p])?;
    let class_token = store.take(&vm("embeddings.class_embedding"), &[d])?.f_reshape([1, 1, d].as_slice())?;
    let pos_embed = store.take(&vm("embeddings.position_embedding.weight"), &[n_pos, d])?.f_unsqueeze(0)?;
    let ln_pre = ln(store, &vm("pre_layrnorm"), d)?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        blocks.push(clip_block(store, &vm(&format!("encoder.layers.{l}")), d, cfg.d_mlp, cfg.n_heads)?);
    }
    let ln_final = ln(store, &vm("post_layernorm"), d)?;
    let proj_dim = store.shape_of("visual_projection.weight").map_or(0, |s| s[0]);
    let projection = store.take("visual_projection.weight", &[proj_dim, d])?;
    // Text tower.
    let td = t.hidden_size;
    let vocab = store.shape_of("text_model.embeddings.token_embedding.weight").map_or(0, |s| s[0]);
    let tm = |n: &str| format!("text_model.{n}");
    let token_embed = store.take(&tm("embeddings.token_embedding.weight"), &[vocab, td])?;
    let text_pos = store.take(&tm("embeddings.position_embedding.weight"), &[t.max_position_embeddings, td])?;
    let mut text_blocks = Vec::with_capacity(t.num_hidden_layers);
    for l in 0..t.num_hidden_layers {
        text_blocks.push(clip_block(store, &tm(&format!("encoder.layers.{l}")), td, t.intermediate_size, t.num_attention_heads)?);
    }
    let text_ln = ln(store, &tm("final_layer_norm"), td)?;
    let text_projection = store.take("text_projection.weight", &[proj_dim, td])?;
    let logit_scale = logit_scale(store, "logit_scale")?;
    // Buffers some checkpoints carry.
    store.discard_prefix(&vm("embeddings.position_ids"));
    store.discard_prefix(&tm("embeddings.position_ids"));
    let text = HookedTextEncoder {
        cfg: TextConfig {
            d_model: td,
            n_heads: t.num_attention_heads,
            d_head: td / t.num_attention_heads,
            d_mlp: t.intermediate_size,
            n_layers: t.num_hidden_layers,
            layer_norm_eps: t.layer_norm_eps,
            activation: act(&t.hidden_act)?,
            max_positions: t.max_position_embeddings,
            vocab_size: vocab,
            // transformers keeps argmax pooling for configs with the legacy eos_token_id 2.
            pooling: if t.eos_token_id == 2 { TextPooling::ArgmaxId } else { TextPooling::FirstId(t.eos_token_id) },
            pad_to: None,
            mask_padding: true,
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
    clip_parts(cfg, weights, text, GridResample::Bicubic, opts, &config_path, "clip")
}
