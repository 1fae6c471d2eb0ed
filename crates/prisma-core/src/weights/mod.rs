pub mod hf;
pub mod store;
