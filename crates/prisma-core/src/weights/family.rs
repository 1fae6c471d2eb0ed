//! Which loader reads a folder: detection from the files present, then the family's loader, then
//! what every model gets (the unexpected tensors, the refusal of non-finite weights).

pub use super::common::{labels_from_id2label, LoadOptions, SUPPORTED};
use super::common::{unsupported, Parts};
use super::{dinov2, hf_clip, hf_encoder, hf_vit, open_clip, store::TensorStore, timm, videomae, vivit};
use crate::error::{PrismaError, Result};
use crate::models::text::HookedTextEncoder;
use crate::models::vit::HookedViT;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub struct LoadedModel {
    pub vit: HookedViT,
    pub text: Option<HookedTextEncoder>,
    /// tokenizer.json next to the weights (CLIP-style models).
    pub tokenizer: Option<PathBuf>,
    pub labels: Vec<String>,
    /// vit, deit, clip, open_clip, timm, dinov2, videomae, vivit.
    pub family: &'static str,
    /// hf, open_clip, timm.
    pub source_format: &'static str,
    pub architecture: String,
    /// The text of the file the configuration came from.
    pub config_json: String,
    pub n_params: i64,
    pub unexpected: Vec<String>,
}

/// A family loader reading a Hugging Face folder (config.json's value, the open tensors).
type HfLoader = fn(&Path, &serde_json::Value, &mut TensorStore, &LoadOptions) -> Result<Parts>;

/// The loader for a Hugging Face config's `model_type` and `architectures[0]`, if any.
fn hf_loader(model_type: &str, architecture: &str) -> Option<HfLoader> {
    if hf_clip::accepts(model_type, architecture) {
        return Some(hf_clip::load);
    }
    if !hf_encoder::accepts_architecture(architecture) {
        return None;
    }
    let families: [(&[&str], HfLoader); 4] = [
        (hf_vit::MODEL_TYPES, hf_vit::load),
        (dinov2::MODEL_TYPES, dinov2::load),
        (videomae::MODEL_TYPES, videomae::load),
        (vivit::MODEL_TYPES, vivit::load),
    ];
    families.into_iter().find(|(types, _)| types.contains(&model_type)).map(|(_, load)| load)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })
}

pub fn load_dir(dir: &Path, kind: Kind, device: Device, opts: &LoadOptions) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(PrismaError::ModelDir { path: dir.into(), reason: "not a directory".into() });
    }
    let open_clip_config = dir.join("open_clip_config.json");
    let config_path = dir.join("config.json");
    let (parts, source_format, config_json, store) = if open_clip_config.is_file() {
        let text = read(&open_clip_config)?;
        let mut store = open_clip::open_store(dir, kind, device)?;
        (open_clip::load(dir, &text, &mut store, opts)?, "open_clip", text, store)
    } else if config_path.is_file() {
        let text = read(&config_path)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PrismaError::Config { path: config_path.clone(), reason: format!("not valid JSON: {e}") })?;
        if timm::is_timm_config(&v) {
            let mut store = TensorStore::open_dir(dir, kind, device)?;
            (timm::load(dir, &v, &mut store, opts)?, "timm", text, store)
        } else {
            let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
            let architecture = v
                .get("architectures")
                .and_then(|a| a.as_array())
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .to_string();
            let Some(load) = hf_loader(&model_type, &architecture) else {
                let found = if architecture.is_empty() {
                    format!("model_type '{model_type}'")
                } else {
                    format!("{architecture}, model_type '{model_type}'")
                };
                return Err(unsupported(dir, found));
            };
            let mut store = TensorStore::open_dir(dir, kind, device)?;
            (load(dir, &v, &mut store, opts)?, "hf", text, store)
        }
    } else {
        return Err(PrismaError::ModelDir {
            path: dir.into(),
            reason: "no config.json or open_clip_config.json here (expected a Hugging Face, timm or open_clip model folder)".into(),
        });
    };
    if let Some(bad) = store.nonfinite.first().filter(|_| !opts.allow_nonfinite) {
        return Err(bad.error());
    }
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file() && parts.text.is_some());
    Ok(LoadedModel {
        architecture: parts.cfg.architecture.clone(),
        vit: HookedViT { cfg: parts.cfg, weights: parts.weights },
        text: parts.text,
        tokenizer,
        labels: parts.labels,
        family: parts.family,
        source_format,
        config_json,
        n_params: store.n_params,
        unexpected: store.leftover(),
    })
}
