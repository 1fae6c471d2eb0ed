pub mod hf;
pub mod hf_save;
pub mod store;
