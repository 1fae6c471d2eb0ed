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

pub use device::{cuda_available, libtorch_has_cuda, libtorch_lib_dir};
pub use error::{PrismaError, Result};
pub use model::{Model, ModelInfo, RunOutput, RunRequest};
