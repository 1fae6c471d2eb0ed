//! Hugging Face `ViTModel` / `ViTForImageClassification` / DeiT folders: config.json parsing and the
//! checkpoint-name table. The only place HF ViT tensor names appear.

use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::vit::{Activation, BlockWeights, LayerNormWeights, Pooling, ViTConfig, ViTWeights};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// The architectures this loader reads (config.json `architectures[0]`).
pub const ARCHITECTURES: &[&str] = &["ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification"];

/// What to tell a user whose folder is not one of these.
pub fn supported() -> String {
    format!("Hugging Face {}", ARCHITECTURES.join(", "))
}

/// Whether config.json's model_type and first architecture are ones this loader reads.
pub fn accepts(model_type: &str, architecture: &str) -> bool {
    matches!(model_type, "vit" | "deit") && (architecture.is_empty() || ARCHITECTURES.contains(&architecture))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrTwo {
    One(i64),
    Two([i64; 2]),
}

impl OneOrTwo {
    fn pair(&self) -> [i64; 2] {
        match self {
            OneOrTwo::One(n) => [*n, *n],
            OneOrTwo::Two(p) => *p,
        }
    }
}

#[derive(Deserialize)]
struct HfVitConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: i64,
    num_hidden_layers: usize,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    image_size: OneOrTwo,
    patch_size: OneOrTwo,
    #[serde(default = "default_channels")]
    num_channels: i64,
    #[serde(default = "default_true")]
    qkv_bias: bool,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
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

pub struct LoadedHf {
    pub cfg: ViTConfig,
    pub weights: ViTWeights,
    pub labels: Vec<String>,
    pub n_params: i64,
    pub unexpected: Vec<String>,
}

/// Reads the architecture name from config.json without committing to a family.
pub fn sniff(config_path: &Path, text: &str) -> Result<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| PrismaError::Config { path: config_path.into(), reason: format!("not valid JSON: {e}") })?;
    let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
    let arch = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .unwrap_or("")
        .to_string();
    Ok((model_type, arch))
}

pub fn load(dir: &Path, config_text: &str, store: &mut TensorStore) -> Result<LoadedHf> {
    let config_path = dir.join("config.json");
    let raw: HfVitConfig = serde_json::from_str(config_text)
        .map_err(|e| PrismaError::Config { path: config_path.clone(), reason: format!("not a ViT config: {e}") })?;
    let model_type = raw.model_type.clone().unwrap_or_default();
    let architecture = raw.architectures.as_ref().and_then(|a| a.first().cloned()).unwrap_or_default();
    let is_deit = model_type == "deit";
    // Which prefix the checkpoint uses: task models nest the backbone under `vit.`/`deit.`.
    let backbone = if is_deit { "deit" } else { "vit" };
    let prefix = if store.contains(&format!("{backbone}.embeddings.cls_token")) { format!("{backbone}.") } else { String::new() };
    let has_head = store.contains("classifier.weight");
    if architecture == "DeiTForImageClassificationWithTeacher" || store.contains("cls_classifier.weight") {
        return Err(PrismaError::UnsupportedModel {
            path: dir.into(),
            found: "DeiTForImageClassificationWithTeacher (two heads)".into(),
            supported: supported(),
        });
    }
    let activation = parse_activation(&raw.hidden_act).ok_or_else(|| PrismaError::Config {
        path: config_path.clone(),
        reason: format!("unsupported hidden_act '{}'", raw.hidden_act),
    })?;
    if raw.hidden_size % raw.num_attention_heads != 0 {
        return Err(PrismaError::Config {
            path: config_path.clone(),
            reason: format!("hidden_size {} is not divisible by num_attention_heads {}", raw.hidden_size, raw.num_attention_heads),
        });
    }
    let mut labels: Vec<(i64, String)> = raw
        .id2label
        .iter()
        .filter_map(|(k, v)| k.parse::<i64>().ok().map(|i| (i, v.clone())))
        .collect();
    labels.sort();
    let n_classes = if has_head {
        store.shape_of("classifier.weight").map(|s| s[0]).unwrap_or(0)
    } else {
        0
    };
    let labels: Vec<String> = if has_head && labels.len() as i64 == n_classes {
        labels.into_iter().map(|(_, l)| l).collect()
    } else if has_head {
        (0..n_classes).map(|i| format!("LABEL_{i}")).collect()
    } else {
        Vec::new()
    };
    let d = raw.hidden_size;
    let patch = raw.patch_size.pair();
    if patch[0] != patch[1] {
        return Err(PrismaError::Config { path: config_path, reason: "non-square patches are not supported".into() });
    }
    let cfg = ViTConfig {
        architecture,
        image_size: raw.image_size.pair(),
        patch_size: patch[0],
        num_channels: raw.num_channels,
        d_model: d,
        n_heads: raw.num_attention_heads,
        d_head: d / raw.num_attention_heads,
        d_mlp: raw.intermediate_size,
        n_layers: raw.num_hidden_layers,
        layer_norm_eps: raw.layer_norm_eps,
        activation,
        has_class_token: true,
        has_distillation_token: is_deit,
        has_ln_pre: false,
        pooling: Pooling::ClassToken,
        n_classes,
    };
    let p = |name: &str| format!("{prefix}{name}");
    let emb = |name: &str| format!("{prefix}embeddings.{name}");
    let patch_weight = store.take(&emb("patch_embeddings.projection.weight"), &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size])?;
    let patch_bias = store.take_optional(&emb("patch_embeddings.projection.bias"), &[d])?;
    let class_token = Some(store.take(&emb("cls_token"), &[1, 1, d])?);
    let distillation_token = if is_deit { Some(store.take(&emb("distillation_token"), &[1, 1, d])?) } else { None };
    let pos_embed = store.take(&emb("position_embeddings"), &[1, cfg.n_pos(), d])?;
    let ln = |store: &mut TensorStore, name: &str| -> Result<LayerNormWeights> {
        Ok(LayerNormWeights { weight: store.take(&format!("{name}.weight"), &[d])?, bias: store.take(&format!("{name}.bias"), &[d])? })
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = |name: &str| p(&format!("encoder.layer.{l}.{name}"));
        let ln1 = ln(store, &b("layernorm_before"))?;
        let mut w = Vec::new();
        let mut bias = Vec::new();
        for proj in ["query", "key", "value"] {
            w.push(store.take(&b(&format!("attention.attention.{proj}.weight")), &[d, d])?);
            if raw.qkv_bias {
                bias.push(store.take(&b(&format!("attention.attention.{proj}.bias")), &[d])?);
            }
        }
        let w_qkv = Tensor::f_cat(&w, 0)?;
        let b_qkv = if raw.qkv_bias { Some(Tensor::f_cat(&bias, 0)?) } else { None };
        let w_o = store.take(&b("attention.output.dense.weight"), &[d, d])?;
        // nn.Linear stores [out, in]; per head h the input slice is columns h*dh..(h+1)*dh.
        let w_o_heads = w_o
            .f_reshape([d, cfg.n_heads, cfg.d_head].as_slice())?
            .f_permute([1i64, 2, 0].as_slice())?
            .f_contiguous()?;
        let b_o = store.take(&b("attention.output.dense.bias"), &[d])?;
        let ln2 = ln(store, &b("layernorm_after"))?;
        let w_in = store.take(&b("intermediate.dense.weight"), &[cfg.d_mlp, d])?;
        let b_in = store.take(&b("intermediate.dense.bias"), &[cfg.d_mlp])?;
        let w_out = store.take(&b("output.dense.weight"), &[d, cfg.d_mlp])?;
        let b_out = store.take(&b("output.dense.bias"), &[d])?;
        blocks.push(BlockWeights { ln1, w_qkv, b_qkv, w_o, w_o_heads, b_o, ln2, w_in, b_in, w_out, b_out });
    }
    let ln_final = ln(store, &p("layernorm"))?;
    let head = if has_head {
        Some((store.take("classifier.weight", &[n_classes, d])?, store.take("classifier.bias", &[n_classes])?))
    } else {
        None
    };
    // The pooler (dense + tanh on the class token) feeds no output we expose.
    store.discard_prefix(&p("pooler."));
    let n_params = store.n_params;
    let unexpected = store.leftover();
    Ok(LoadedHf {
        weights: ViTWeights { patch_weight, patch_bias, class_token, distillation_token, pos_embed, ln_pre: None, blocks, ln_final, head },
        cfg,
        labels,
        n_params,
        unexpected,
    })
}
