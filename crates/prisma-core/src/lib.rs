//! prisma-core: hooked vision-transformer forward passes on libtorch, with TransformerLens hook
//! names, activation caching and interventions applied natively during the forward.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod analysis;
pub mod device;
pub mod error;
pub mod hooks;
mod inference_mode;
pub mod interventions;
pub mod model;
pub mod models;
pub mod sae;
pub mod tensor_file;
pub mod training;
pub mod weights;

pub use error::{PrismaError, Result};
pub use model::{Model, ModelInfo, RunOutput, RunRequest};

/// libtorch's library folder as seen at build time (set by scripts/setup.mjs).
pub const LIBTORCH_LIB_DIR: Option<&str> = option_env!("PRISMA_LIBTORCH_LIB");

pub fn libtorch_has_cuda() -> bool {
    LIBTORCH_LIB_DIR.map(|d| std::path::Path::new(d).join("libtorch_cuda.so").exists()).unwrap_or(false)
}

pub fn cuda_available() -> bool {
    device::parse_device("cuda").is_ok()
}
