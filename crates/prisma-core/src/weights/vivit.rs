//! Hugging Face ViViT (`VivitModel`, `VivitForVideoClassification`): ViT's layout (hf_encoder.rs)
//! over tubelets, `tubelet_size` [t, p, p] giving the frames per tubelet and the patch, with a
//! learned position table over every time slice's grid.

use super::common::{LoadOptions, Parts};
use super::hf_encoder::load_vit_layout;
use super::store::TensorStore;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// config.json `model_type`s this loader reads.
pub const MODEL_TYPES: &[&str] = &["vivit"];

pub fn load(dir: &Path, value: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    load_vit_layout(dir, value, store, opts, "vivit", false)
}
