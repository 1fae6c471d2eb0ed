//! Writing a HookedViT as a Hugging Face `ViTForImageClassification` folder (config.json +
//! model.safetensors): the inverse of weights/hf_vit.rs, so every command (and transformers itself)
//! loads what `prisma train` produces.

use crate::error::{PrismaError, Result};
use crate::model::to_f32_vec;
use crate::models::vit::{FinalNorm, Head, HookedViT, Pooling};
use crate::tensor_file::{save_safetensors, write_atomically};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Tensors under their HF names, as float32.
pub fn hf_tensors(vit: &HookedViT) -> Result<Vec<crate::tensor_file::NamedF32>> {
    let c = &vit.cfg;
    let w = &vit.weights;
    if c.pooling != Pooling::ClassToken
        || c.has_ln_pre
        || c.has_distillation_token
        || c.num_frames > 0
        || c.n_registers > 0
        || c.gated_mlp
        || c.final_norm != FinalNorm::AllTokens
    {
        return Err(PrismaError::Argument("only class-token ViTs without ln_pre can be saved in HF ViT format".into()));
    }
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
    let e = "vit.embeddings.";
    put(format!("{e}patch_embeddings.projection.weight"), &w.patch_weight);
    if let Some(b) = &w.patch_bias {
        put(format!("{e}patch_embeddings.projection.bias"), b);
    }
    if let Some(t) = &w.class_token {
        put(format!("{e}cls_token"), t);
    }
    put(format!("{e}position_embeddings"), &w.pos_embed);
    for (l, b) in w.blocks.iter().enumerate() {
        let p = |s: &str| format!("vit.encoder.layer.{l}.{s}");
        put(p("layernorm_before.weight"), &b.ln1.weight);
        put(p("layernorm_before.bias"), &b.ln1.bias);
        let ws = b.w_qkv.f_split(c.d_model, 0)?;
        for (proj, t) in ["query", "key", "value"].iter().zip(&ws) {
            put(p(&format!("attention.attention.{proj}.weight")), t);
        }
        if let Some(bq) = &b.b_qkv {
            let bs = bq.f_split(c.d_model, 0)?;
            for (proj, t) in ["query", "key", "value"].iter().zip(&bs) {
                put(p(&format!("attention.attention.{proj}.bias")), t);
            }
        }
        put(p("attention.output.dense.weight"), &b.w_o);
        put(p("attention.output.dense.bias"), &b.b_o);
        put(p("layernorm_after.weight"), &b.ln2.weight);
        put(p("layernorm_after.bias"), &b.ln2.bias);
        put(p("intermediate.dense.weight"), &b.w_in);
        put(p("intermediate.dense.bias"), &b.b_in);
        put(p("output.dense.weight"), &b.w_out);
        put(p("output.dense.bias"), &b.b_out);
    }
    put("vit.layernorm.weight".into(), &w.ln_final.weight);
    put("vit.layernorm.bias".into(), &w.ln_final.bias);
    if let Head::Classifier { weight: hw, bias: hb } = &w.head {
        put("classifier.weight".into(), hw);
        put("classifier.bias".into(), hb);
    }
    out.into_iter()
        .map(|(n, t)| {
            let (shape, data) = to_f32_vec(&t.f_detach()?)?;
            Ok((n, shape, data))
        })
        .collect()
}

pub fn hf_config(vit: &HookedViT, labels: &[String]) -> serde_json::Value {
    let c = &vit.cfg;
    let id2label: serde_json::Map<String, serde_json::Value> = labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    json!({
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_mlp,
        "hidden_act": match c.activation.name() { "gelu_tanh" => "gelu_pytorch_tanh", other => other },
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": c.layer_norm_eps,
        "image_size": c.image_size[0],
        "patch_size": c.patch_size,
        "num_channels": c.num_channels,
        "qkv_bias": true,
        "encoder_stride": c.patch_size,
        "id2label": id2label,
        "label2id": label2id,
        "torch_dtype": "float32",
    })
}

/// Writes config.json and model.safetensors (atomically, each) into `dir`.
pub fn save_hf_folder(vit: &HookedViT, labels: &[String], dir: &Path, metadata: HashMap<String, String>) -> Result<()> {
    if vit.cfg.image_size[0] != vit.cfg.image_size[1] {
        return Err(PrismaError::Argument("HF ViT configs describe square images only".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| PrismaError::Io { path: dir.into(), reason: e.to_string() })?;
    let tensors = hf_tensors(vit)?;
    let mut meta = metadata;
    meta.insert("format".into(), "pt".into());
    save_safetensors(&dir.join("model.safetensors"), &tensors, Some(meta))?;
    let text = serde_json::to_string_pretty(&hf_config(vit, labels)).map_err(|e| PrismaError::Internal(e.to_string()))?;
    let config = dir.join("config.json");
    write_atomically(&config, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| PrismaError::Io { path: config.clone(), reason: e.to_string() })
    })
}
