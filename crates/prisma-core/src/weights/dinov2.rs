//! Hugging Face DINOv2 (`Dinov2Model`) and DINOv2 with registers (`Dinov2WithRegistersModel`):
//! layer scale folded into the output projections, SwiGLU where the config says so, and a learned
//! position table at the pretraining grid, resized to the size the preprocessor crops to. The only
//! place their checkpoint names appear (with the shared layout in hf_encoder.rs).

use super::common::{ln, unsupported, LoadOptions, Parts};
use super::hf_encoder::{BlockNames, Header, QkvBias};
use super::pos_embed::GridResample;
use super::store::TensorStore;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;
use tch::Tensor;

/// config.json `model_type`s this loader reads.
pub const MODEL_TYPES: &[&str] = &["dinov2", "dinov2_with_registers"];

const BLOCK: BlockNames =
    BlockNames { ln1: "norm1", ln2: "norm2", mlp_in: "mlp.fc1", mlp_out: "mlp.fc2", qkv_bias: QkvBias::Each, layer_scale: true };

/// Reads `preprocessor_config.json`'s crop size (DINOv2 runs at it, not at its pretraining grid).
fn preprocessor_crop(dir: &Path) -> Option<[i64; 2]> {
    let text = std::fs::read_to_string(dir.join("preprocessor_config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let crop = v.get("crop_size")?;
    if let Some(n) = crop.as_i64() {
        return Some([n, n]);
    }
    Some([crop.get("height")?.as_i64()?, crop.get("width")?.as_i64()?])
}

pub fn load(dir: &Path, value: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let h = Header::read(dir, value, store, "dinov2")?;
    let with_registers = h.raw.model_type == "dinov2_with_registers";
    if store.contains("classifier.weight") {
        return Err(unsupported(dir, format!("{} (classifier on [class; mean of patches])", h.architecture)));
    }
    let n_registers = if with_registers { h.raw.num_register_tokens } else { 0 };
    let emb = h.embeddings(store, false, n_registers)?;
    let (table, table_grid) = h.learned_positions(store, &emb, None)?;
    // Registers get no position embedding: zero rows keep the table in token order.
    let pos_embed = if n_registers > 0 {
        let d = h.d;
        let n_prefix = emb.n_table_prefix();
        let zeros = Tensor::f_zeros([1, n_registers, d].as_slice(), (table.kind(), table.device()))?;
        Tensor::f_cat(&[table.f_narrow(1, 0, n_prefix)?, zeros, table.f_narrow(1, n_prefix, table.size()[1] - n_prefix)?], 1)?
    } else {
        table
    };
    let d_mlp = h.d_mlp(store)?;
    let cfg = h.config(&emb, d_mlp, table_grid);
    let blocks = h.blocks(store, &BLOCK, d_mlp, cfg.d_head)?;
    let ln_final = ln(store, &h.p("layernorm"), h.d)?;
    let head = h.head(store, 0)?;
    let how = if with_registers { GridResample::BicubicAntialias } else { GridResample::Bicubic };
    let size = opts.image_size.or_else(|| preprocessor_crop(dir));
    h.finish(store, cfg, emb, pos_embed, blocks, ln_final, head, how, size, Vec::new(), "dinov2")
}
