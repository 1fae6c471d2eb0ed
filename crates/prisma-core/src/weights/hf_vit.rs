//! Hugging Face ViT / DINO (`ViTModel`, `ViTForImageClassification`) and DeiT (`DeiTModel`,
//! `DeiTForImageClassification`, with its distillation token). Their tensor names are the
//! `encoder.layer.{l}` layout of hf_encoder.rs, which they share with DINOv2 and the video models.

use super::common::{LoadOptions, Parts};
use super::hf_encoder::load_vit_layout;
use super::store::TensorStore;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// config.json `model_type`s this loader reads.
pub const MODEL_TYPES: &[&str] = &["vit", "deit"];

pub fn load(dir: &Path, value: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let deit = value.get("model_type").and_then(Value::as_str) == Some("deit");
    load_vit_layout(dir, value, store, opts, if deit { "deit" } else { "vit" }, deit)
}
