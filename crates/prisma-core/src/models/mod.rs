pub mod activation;
pub mod block;
pub mod linear;
pub mod text;
pub mod vit;
