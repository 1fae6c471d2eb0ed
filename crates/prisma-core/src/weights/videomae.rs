//! Hugging Face VideoMAE (`VideoMAEModel`, `VideoMAEForVideoClassification`): tubelet embedding, a
//! fixed sinusoid position table, q and v biases without a k bias, and (classifier models) the mean
//! of the patch tokens normalised by `fc_norm`. Its tensor names are hf_encoder.rs's layout plus
//! those here.

use super::common::{ln, LoadOptions, Parts};
use super::hf_encoder::{BlockNames, Header, QkvBias, VIT_BLOCK};
use super::pos_embed::{sinusoid_table, GridResample};
use super::store::TensorStore;
use crate::error::Result;
use crate::models::vit::{FinalNorm, Pooling};
use serde_json::Value;
use std::path::Path;

/// config.json `model_type`s this loader reads.
pub const MODEL_TYPES: &[&str] = &["videomae"];

const BLOCK: BlockNames = BlockNames { qkv_bias: QkvBias::QueryValue, ..VIT_BLOCK };

pub fn load(dir: &Path, value: &Value, store: &mut TensorStore, opts: &LoadOptions) -> Result<Parts> {
    let h = Header::read(dir, value, store, "videomae")?;
    let (n_classes, labels) = h.classes(store, value);
    // The classifier pools (mean) then applies fc_norm; without fc_norm it reads token 0.
    let fc_norm = store.contains("fc_norm.weight");
    if !h.raw.use_mean_pooling && !store.contains(&h.p("layernorm.weight")) {
        return Err(h.bad("VideoMAE without fc_norm or a final layernorm".into()));
    }
    let emb = h.embeddings(store, false, 0)?;
    let grid = h.image_grid();
    let n = (h.num_frames / h.tubelet) * grid[0] * grid[1];
    let pos_embed = sinusoid_table(n, h.d)?.f_to_kind(emb.patch_weight.kind())?.f_to_device(emb.patch_weight.device())?;
    let d_mlp = h.d_mlp(store)?;
    let mut cfg = h.config(&emb, d_mlp, grid);
    cfg.n_classes = n_classes;
    if fc_norm {
        (cfg.pooling, cfg.final_norm, cfg.final_norm_eps) = (Pooling::MeanPatches, FinalNorm::Pooled, 1e-5);
    }
    let blocks = h.blocks(store, &BLOCK, d_mlp, cfg.d_head)?;
    let ln_final = if fc_norm { ln(store, "fc_norm", h.d)? } else { ln(store, &h.p("layernorm"), h.d)? };
    let head = h.head(store, n_classes)?;
    h.finish(store, cfg, emb, pos_embed, blocks, ln_final, head, GridResample::Bicubic, opts.image_size, labels, "videomae")
}
