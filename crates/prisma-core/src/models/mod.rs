pub mod block;
pub mod text;
pub mod vit;
