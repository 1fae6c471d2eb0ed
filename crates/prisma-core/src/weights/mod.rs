pub mod family;
pub mod hf;
pub mod hf_clip;
pub mod hf_save;
pub mod open_clip;
pub mod pos_embed;
pub mod store;
pub mod timm;
