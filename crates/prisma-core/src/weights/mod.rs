//! Checkpoints in, `HookedViT` (+ text tower) out. `family.rs` detects which loader reads a folder;
//! each family's loader (`hf_vit.rs`, `dinov2.rs`, `videomae.rs`, `vivit.rs`, `hf_clip.rs`,
//! `timm.rs`, `open_clip.rs`) is the only place its checkpoint names appear; what they share is in
//! `common.rs` (and `hf_encoder.rs` for the Hugging Face `encoder.layer.{l}` layout). Loaders depend
//! on `common`, never on `family` or on each other, so detection and loading import in one direction.

pub mod common;
pub mod dinov2;
pub mod family;
pub mod hf_clip;
pub mod hf_clip_save;
mod hf_encoder;
pub mod hf_save;
pub mod hf_vit;
pub mod open_clip;
pub mod pickle;
pub mod pos_embed;
pub mod store;
pub mod timm;
pub mod torch_pickle;
pub mod videomae;
pub mod vivit;
