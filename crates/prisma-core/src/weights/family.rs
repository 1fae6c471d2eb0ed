//! Which loader reads a folder: detection from the files present, the list of supported families
//! for error messages, and what every loader returns.

use super::{hf, hf_clip, open_clip, store::TensorStore, timm};
use crate::error::{PrismaError, Result};
use crate::models::text::HookedTextEncoder;
use crate::models::vit::{HookedViT, ViTConfig, ViTWeights};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

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

/// Parts a family loader fills; `finish` turns them into a `LoadedModel`.
pub struct Parts {
    pub cfg: ViTConfig,
    pub weights: ViTWeights,
    pub text: Option<HookedTextEncoder>,
    pub labels: Vec<String>,
    pub family: &'static str,
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
            let unsupported = || {
                let found = if architecture.is_empty() {
                    format!("model_type '{model_type}'")
                } else {
                    format!("{architecture}, model_type '{model_type}'")
                };
                PrismaError::UnsupportedModel { path: dir.into(), found, supported: SUPPORTED.into() }
            };
            let parts = if hf_clip::accepts(&model_type, &architecture) {
                let mut store = TensorStore::open_dir(dir, kind, device)?;
                let parts = hf_clip::load(dir, &v, &mut store, opts)?;
                (parts, store)
            } else if hf::accepts(&model_type, &architecture) {
                let mut store = TensorStore::open_dir(dir, kind, device)?;
                let parts = hf::load(dir, &v, &mut store, opts)?;
                (parts, store)
            } else {
                return Err(unsupported());
            };
            (parts.0, "hf", text, parts.1)
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
