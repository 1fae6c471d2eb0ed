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

/// libtorch's library folder, read at run time from PRISMA_LIBTORCH_LIB (set by the Node loader,
/// src/setup/load.ts, and by scripts/cargo-test.mjs). Not a build-time constant: a prebuilt addon
/// runs against the libtorch of the machine it is installed on.
pub fn libtorch_lib_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("PRISMA_LIBTORCH_LIB").filter(|d| !d.is_empty()).map(std::path::PathBuf::from)
}

pub fn libtorch_has_cuda() -> bool {
    libtorch_lib_dir().map(|d| d.join("libtorch_cuda.so").exists()).unwrap_or(false)
}

pub fn cuda_available() -> bool {
    device::parse_device("cuda").is_ok()
}
