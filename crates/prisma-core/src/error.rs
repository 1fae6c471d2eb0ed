//! One error type for the whole core. Every variant has a stable code that travels unchanged
//! through the binding to the shell (`E_UNKNOWN_HOOK: ...`), so scripts can branch on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PrismaError {
    #[error("{path}: {reason}")]
    ModelDir { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: unsupported model ({found}); supported: {supported}")]
    UnsupportedModel { path: PathBuf, found: String, supported: String },
    #[error("{file}: missing tensor '{tensor}'")]
    WeightsMissing { file: PathBuf, tensor: String },
    #[error("{file}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    WeightsShape { file: PathBuf, tensor: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{file}: {reason}")]
    WeightsFormat { file: PathBuf, reason: String },
    #[error("{file}: refusing to load a pickle that calls '{global}': loading it would run code (only torch.save tensor data and known configs are read)")]
    UnsafePickle { file: PathBuf, global: String },
    #[error("{file}: tensor '{tensor}' holds {nan} NaN and {inf} infinite values; the model's outputs would be NaN")]
    WeightsNonFinite { file: PathBuf, tensor: String, nan: i64, inf: i64 },
    #[error("{0}")]
    UnknownHook(String),
    #[error("{0}")]
    LayerRange(String),
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Intervention(String),
    #[error("{path}: {reason}")]
    TensorFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Dtype(String),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{0}")]
    Argument(String),
    #[error("{0}")]
    Internal(String),
}

impl PrismaError {
    /// Stable machine-readable code; never change an existing one.
    pub fn code(&self) -> &'static str {
        match self {
            PrismaError::ModelDir { .. } => "E_MODEL_DIR",
            PrismaError::Config { .. } => "E_CONFIG",
            PrismaError::UnsupportedModel { .. } => "E_UNSUPPORTED_MODEL",
            PrismaError::WeightsMissing { .. } => "E_WEIGHTS_MISSING",
            PrismaError::WeightsShape { .. } => "E_WEIGHTS_SHAPE",
            PrismaError::WeightsFormat { .. } => "E_WEIGHTS_FORMAT",
            PrismaError::UnsafePickle { .. } => "E_UNSAFE_PICKLE",
            PrismaError::WeightsNonFinite { .. } => "E_WEIGHTS_NONFINITE",
            PrismaError::UnknownHook(_) => "E_UNKNOWN_HOOK",
            PrismaError::LayerRange(_) => "E_LAYER_RANGE",
            PrismaError::Shape(_) => "E_SHAPE",
            PrismaError::Intervention(_) => "E_INTERVENTION",
            PrismaError::TensorFile { .. } => "E_TENSOR_FILE",
            PrismaError::Device(_) => "E_DEVICE",
            PrismaError::Dtype(_) => "E_DTYPE",
            PrismaError::Io { .. } => "E_IO",
            PrismaError::Argument(_) => "E_ARGUMENT",
            PrismaError::Internal(_) => "E_INTERNAL",
        }
    }
}

/// libtorch errors carry a C++ backtrace over many lines; keep the first line so the shell sees one.
impl From<tch::TchError> for PrismaError {
    fn from(e: tch::TchError) -> Self {
        let text = e.to_string();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("libtorch error");
        PrismaError::Internal(format!("libtorch: {}", first.trim()))
    }
}

pub type Result<T> = std::result::Result<T, PrismaError>;
