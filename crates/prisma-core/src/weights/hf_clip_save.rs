//! Writing a vision tower + text tower as a Hugging Face `CLIPModel` folder (config.json,
//! model.safetensors and the tokenizer files): the inverse of weights/hf_clip.rs, so every command
//! (and transformers itself) loads what `prisma train --clip` produces.

use crate::error::{PrismaError, Result};
use crate::model::to_f32_vec;
use crate::models::text::{HookedTextEncoder, TextPooling};
use crate::models::vit::{BlockWeights, FinalNorm, Head, HookedViT, Pooling};
use crate::tensor_file::{save_safetensors, write_atomically};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Special token ids of the text tower's tokenizer, as CLIPTextConfig records them.
#[derive(Debug, Clone, Copy)]
pub struct TokenIds {
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
}

/// The tokenizer files a CLIP folder carries (tokenizer.json is the one prisma reads; the others
/// let transformers' slow and fast CLIPTokenizer load the folder too).
pub const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];

fn hf_act(name: &str) -> &str {
    match name {
        "gelu_tanh" => "gelu_pytorch_tanh",
        other => other,
    }
}

/// One `encoder.layers.{l}` block under its HF CLIP names.
fn block_tensors(out: &mut Vec<(String, Tensor)>, prefix: &str, b: &BlockWeights, d: i64) -> Result<()> {
    let mut put = |name: &str, t: &Tensor| out.push((format!("{prefix}.{name}"), t.shallow_clone()));
    put("layer_norm1.weight", &b.ln1.weight);
    put("layer_norm1.bias", &b.ln1.bias);
    let b_qkv = b.b_qkv.as_ref().ok_or_else(|| PrismaError::Argument("CLIP attention needs q/k/v biases".into()))?;
    for ((proj, w), bias) in ["q_proj", "k_proj", "v_proj"].iter().zip(b.w_qkv.f_split(d, 0)?).zip(b_qkv.f_split(d, 0)?) {
        put(&format!("self_attn.{proj}.weight"), &w);
        put(&format!("self_attn.{proj}.bias"), &bias);
    }
    put("self_attn.out_proj.weight", &b.w_o);
    put("self_attn.out_proj.bias", &b.b_o);
    put("layer_norm2.weight", &b.ln2.weight);
    put("layer_norm2.bias", &b.ln2.bias);
    put("mlp.fc1.weight", &b.w_in);
    put("mlp.fc1.bias", &b.b_in);
    put("mlp.fc2.weight", &b.w_out);
    put("mlp.fc2.bias", &b.b_out);
    Ok(())
}

fn check_shape(vit: &HookedViT, text: &HookedTextEncoder) -> Result<()> {
    let c = &vit.cfg;
    let w = &vit.weights;
    let clip_like = c.pooling == Pooling::ClassToken
        && c.has_class_token
        && c.has_ln_pre
        && c.final_norm == FinalNorm::Pooled
        && !c.has_distillation_token
        && c.n_registers == 0
        && c.num_frames == 0
        && !c.gated_mlp
        && w.patch_bias.is_none()
        && c.image_size[0] == c.image_size[1];
    if !clip_like {
        return Err(PrismaError::Argument(
            "only square, class-token vision towers with ln_pre, a pooled final norm and no patch bias can be saved as HF CLIP".into(),
        ));
    }
    if !text.cfg.mask_padding || text.cfg.pad_to.is_some() {
        return Err(PrismaError::Argument("HF CLIP text towers mask padding and pad to the longest prompt".into()));
    }
    Ok(())
}

/// Tensors under their HF names, as float32. `log_logit_scale` is the stored (log) temperature.
pub fn clip_tensors(vit: &HookedViT, text: &HookedTextEncoder, log_logit_scale: f32) -> Result<Vec<crate::tensor_file::NamedF32>> {
    check_shape(vit, text)?;
    let (c, w) = (&vit.cfg, &vit.weights);
    let d = c.d_model;
    let Head::Contrastive { projection, .. } = &w.head else {
        return Err(PrismaError::Argument("the vision tower has no contrastive projection".into()));
    };
    let class_token = w.class_token.as_ref().ok_or_else(|| PrismaError::Internal("no class token".into()))?;
    let ln_pre = w.ln_pre.as_ref().ok_or_else(|| PrismaError::Internal("no ln_pre".into()))?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let v = "vision_model";
    out.push((format!("{v}.embeddings.class_embedding"), class_token.f_reshape([d].as_slice())?));
    out.push((format!("{v}.embeddings.patch_embedding.weight"), w.patch_weight.shallow_clone()));
    out.push((format!("{v}.embeddings.position_embedding.weight"), w.pos_embed.f_reshape([c.n_pos(), d].as_slice())?));
    out.push((format!("{v}.pre_layrnorm.weight"), ln_pre.weight.shallow_clone()));
    out.push((format!("{v}.pre_layrnorm.bias"), ln_pre.bias.shallow_clone()));
    for (l, b) in w.blocks.iter().enumerate() {
        block_tensors(&mut out, &format!("{v}.encoder.layers.{l}"), b, d)?;
    }
    out.push((format!("{v}.post_layernorm.weight"), w.ln_final.weight.shallow_clone()));
    out.push((format!("{v}.post_layernorm.bias"), w.ln_final.bias.shallow_clone()));
    out.push(("visual_projection.weight".into(), projection.shallow_clone()));
    let (tc, tw) = (&text.cfg, &text.weights);
    let t = "text_model";
    out.push((format!("{t}.embeddings.token_embedding.weight"), tw.token_embed.shallow_clone()));
    out.push((format!("{t}.embeddings.position_embedding.weight"), tw.pos_embed.shallow_clone()));
    for (l, b) in tw.blocks.iter().enumerate() {
        block_tensors(&mut out, &format!("{t}.encoder.layers.{l}"), b, tc.d_model)?;
    }
    out.push((format!("{t}.final_layer_norm.weight"), tw.ln_final.weight.shallow_clone()));
    out.push((format!("{t}.final_layer_norm.bias"), tw.ln_final.bias.shallow_clone()));
    out.push(("text_projection.weight".into(), tw.projection.shallow_clone()));
    let mut tensors = out
        .into_iter()
        .map(|(n, t)| {
            let (shape, data) = to_f32_vec(&t.f_detach()?)?;
            Ok((n, shape, data))
        })
        .collect::<Result<Vec<_>>>()?;
    tensors.push(("logit_scale".into(), vec![], vec![log_logit_scale]));
    Ok(tensors)
}

/// config.json: the fields weights/hf_clip.rs reads, plus what transformers' CLIPConfig needs to
/// build the same model (vocabulary, special ids, projection size).
pub fn clip_config(vit: &HookedViT, text: &HookedTextEncoder, ids: TokenIds) -> Result<serde_json::Value> {
    let (c, tc) = (&vit.cfg, &text.cfg);
    let Head::Contrastive { projection, .. } = &vit.weights.head else {
        return Err(PrismaError::Argument("the vision tower has no contrastive projection".into()));
    };
    let proj = projection.size()[0];
    // transformers pools at the first eos_token_id, except for the legacy id 2 (argmax of ids).
    let pooling_ok = match tc.pooling {
        TextPooling::FirstId(eos) => eos == ids.eos && eos != 2,
        TextPooling::ArgmaxId => ids.eos == 2,
    };
    if !pooling_ok {
        return Err(PrismaError::Argument(format!("text pooling {:?} cannot be written as HF CLIP eos_token_id {}", tc.pooling, ids.eos)));
    }
    Ok(json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": proj,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": tc.vocab_size,
            "hidden_size": tc.d_model,
            "intermediate_size": tc.d_mlp,
            "num_hidden_layers": tc.n_layers,
            "num_attention_heads": tc.n_heads,
            "max_position_embeddings": tc.max_positions,
            "hidden_act": hf_act(tc.activation.name()),
            "layer_norm_eps": tc.layer_norm_eps,
            "attention_dropout": 0.0,
            "projection_dim": proj,
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
            "pad_token_id": ids.pad,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": c.d_model,
            "intermediate_size": c.d_mlp,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_channels": c.num_channels,
            "image_size": c.image_size[0],
            "patch_size": c.patch_size,
            "hidden_act": hf_act(c.activation.name()),
            "layer_norm_eps": c.layer_norm_eps,
            "attention_dropout": 0.0,
            "projection_dim": proj,
        },
    }))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PrismaError + '_ {
    move |e| PrismaError::Io { path: path.into(), reason: e.to_string() }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |tmp| std::fs::write(tmp, text.as_bytes()).map_err(io(path)))
}

/// Copies the tokenizer files found in `tokenizer_dir` (tokenizer.json is required), setting
/// tokenizer_config.json's `model_max_length` to the text tower's context.
pub fn copy_tokenizer(tokenizer_dir: &Path, dir: &Path, context: i64) -> Result<()> {
    if !tokenizer_dir.join("tokenizer.json").is_file() {
        return Err(PrismaError::ModelDir { path: tokenizer_dir.into(), reason: "no tokenizer.json here".into() });
    }
    let same_dir = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    for name in TOKENIZER_FILES {
        let (src, dst) = (tokenizer_dir.join(name), dir.join(name));
        if !src.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&src).map_err(io(&src))?;
        let text = if *name == "tokenizer_config.json" {
            let mut v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| PrismaError::Config { path: src.clone(), reason: format!("not valid JSON: {e}") })?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("model_max_length".into(), json!(context));
            }
            format!("{}\n", serde_json::to_string_pretty(&v).map_err(|e| PrismaError::Internal(e.to_string()))?)
        } else if same_dir(tokenizer_dir, dir) {
            continue;
        } else {
            text
        };
        write_text(&dst, &text)?;
    }
    Ok(())
}

/// Writes config.json, model.safetensors (atomically, each) and the tokenizer files into `dir`.
pub fn save_clip_folder(
    vit: &HookedViT,
    text: &HookedTextEncoder,
    log_logit_scale: f32,
    ids: TokenIds,
    tokenizer_dir: &Path,
    dir: &Path,
    metadata: HashMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = clip_config(vit, text, ids)?;
    let tensors = clip_tensors(vit, text, log_logit_scale)?;
    let mut meta = metadata;
    meta.insert("format".into(), "pt".into());
    save_safetensors(&dir.join("model.safetensors"), &tensors, Some(meta))?;
    let text_json = serde_json::to_string_pretty(&config).map_err(|e| PrismaError::Internal(e.to_string()))?;
    write_text(&dir.join("config.json"), &format!("{text_json}\n"))?;
    copy_tokenizer(tokenizer_dir, dir, text.cfg.max_positions)
}
