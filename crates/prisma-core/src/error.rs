//! One error type for the whole core. Every variant has a stable code that travels unchanged
//! through the binding to the shell (`prisma: E_UNKNOWN_HOOK: ...`), so scripts can branch on it.
//! [`PrismaError::payload`] is what crosses to JavaScript: code, message, an optional hint and the
//! variant's structured fields as `data` (the binding turns it into a JS Error with those
//! properties; src/errors.ts holds the matching registry, checked against [`codes`] by a test).

use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrismaError {
    #[error("{path}: {reason}")]
    ModelDir { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: unsupported model ({found}); supported: {supported}")]
    UnsupportedModel { path: PathBuf, found: String, supported: String },
    /// A technique that reads logits, asked of a model without a classification head.
    #[error("{what} needs a classification head, and {} has none ({architecture})", path.display())]
    NoHead { what: String, path: PathBuf, architecture: String },
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
    /// libtorch could not allocate: the input (batch, image size, hooks cached) is too large for
    /// the device's memory. Caused by what the user asked for, so not a bug.
    #[error("{0}")]
    OutOfMemory(String),
    /// An activation cache made for other activations (model, hooks, tokens, dtype or inputs).
    #[error("{path}: {reason}")]
    CacheMismatch { path: PathBuf, reason: String },
    /// A truncated or unreadable activation cache file.
    #[error("{path}: {reason}")]
    CacheCorrupt { path: PathBuf, reason: String },
    /// A valid request this technique cannot honour (e.g. an analysis on a model with an SAE spliced in).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

/// Declares each variant's stable code once; [`PrismaError::code`] and [`codes`] both come from it.
macro_rules! codes {
    ($($variant:ident => $code:literal,)*) => {
        /// Every variant's code in declaration order; a code shared by two variants (one
        /// mistake, two places it is found) appears twice here, once in [`codes`].
        const VARIANT_CODES: &[&str] = &[$($code,)*];

        impl PrismaError {
            /// Stable machine-readable code; never change an existing one.
            pub fn code(&self) -> &'static str {
                match self {
                    $(PrismaError::$variant { .. } => $code,)*
                }
            }
        }
    };
}

codes! {
    ModelDir => "E_MODEL_DIR",
    Config => "E_CONFIG",
    UnsupportedModel => "E_UNSUPPORTED_MODEL",
    NoHead => "E_UNSUPPORTED_MODEL",
    WeightsMissing => "E_WEIGHTS_MISSING",
    WeightsShape => "E_WEIGHTS_SHAPE",
    WeightsFormat => "E_WEIGHTS_FORMAT",
    UnsafePickle => "E_UNSAFE_PICKLE",
    WeightsNonFinite => "E_WEIGHTS_NONFINITE",
    UnknownHook => "E_UNKNOWN_HOOK",
    LayerRange => "E_LAYER_RANGE",
    Shape => "E_SHAPE",
    Intervention => "E_INTERVENTION",
    TensorFile => "E_TENSOR_FILE",
    Device => "E_DEVICE",
    Dtype => "E_DTYPE",
    Io => "E_IO",
    Argument => "E_ARGUMENT",
    OutOfMemory => "E_OUT_OF_MEMORY",
    CacheMismatch => "E_CACHE_MISMATCH",
    CacheCorrupt => "E_CACHE_CORRUPT",
    Unsupported => "E_UNSUPPORTED",
    Internal => "E_INTERNAL",
}

/// Every code the core (and so the native addon) can emit, once each, in declaration order.
pub fn codes() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in VARIANT_CODES {
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

/// An error as data, the form in which it crosses the binding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorPayload {
    pub code: &'static str,
    /// One line (libtorch's multi-line messages are cut to their first line at conversion).
    pub message: String,
    /// What to do next, when the core knows better than the code's default hint (src/errors.ts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The variant's structured fields (paths, tensor names, shapes, counts); None for variants
    /// that carry only a message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl PrismaError {
    /// The structured fields of the variant, as JSON (camelCase keys).
    pub fn data(&self) -> Option<Value> {
        Some(match self {
            PrismaError::ModelDir { path: p, .. } | PrismaError::Config { path: p, .. } => json!({ "path": path(p) }),
            PrismaError::UnsupportedModel { path: p, found, supported } => {
                json!({ "path": path(p), "found": found, "supported": supported })
            }
            PrismaError::NoHead { path: p, architecture, .. } => json!({ "path": path(p), "architecture": architecture }),
            PrismaError::WeightsMissing { file, tensor } => json!({ "file": path(file), "tensor": tensor }),
            PrismaError::WeightsShape { file, tensor, expected, found } => {
                json!({ "file": path(file), "tensor": tensor, "expected": expected, "found": found })
            }
            PrismaError::WeightsFormat { file, .. } => json!({ "file": path(file) }),
            PrismaError::UnsafePickle { file, global } => json!({ "file": path(file), "global": global }),
            PrismaError::WeightsNonFinite { file, tensor, nan, inf } => {
                json!({ "file": path(file), "tensor": tensor, "nan": nan, "inf": inf })
            }
            PrismaError::TensorFile { path: p, .. }
            | PrismaError::Io { path: p, .. }
            | PrismaError::CacheMismatch { path: p, .. }
            | PrismaError::CacheCorrupt { path: p, .. } => json!({ "path": path(p) }),
            _ => return None,
        })
    }

    /// A hint specific to this error, where the code's default hint would mislead.
    pub fn hint(&self) -> Option<String> {
        match self {
            PrismaError::NoHead { .. } => Some(
                "give it a linear probe with --probe FILE (.safetensors with weight [classes, d_model] and bias [classes]; \
                 --labels names the classes), or use a model with a head, e.g. ViTForImageClassification"
                    .into(),
            ),
            PrismaError::Shape(m) if m.starts_with(LIBTORCH) => Some(
                "the input's shape does not fit the model (`prisma inspect MODEL` shows what it takes); if it does, this is a bug".into(),
            ),
            _ => None,
        }
    }

    pub fn payload(&self) -> ErrorPayload {
        ErrorPayload { code: self.code(), message: self.to_string(), hint: self.hint(), data: self.data() }
    }
}

const LIBTORCH: &str = "libtorch: ";

/// libtorch errors carry a C++ backtrace over many lines; keep the first line so the shell sees one.
/// An allocation failure or a shape mismatch comes from what the user asked for (a batch too large
/// for memory, an input or tensor of the wrong shape), so they get user-facing codes; anything
/// else from libtorch is a bug (E_INTERNAL).
impl From<tch::TchError> for PrismaError {
    fn from(e: tch::TchError) -> Self {
        let text = e.to_string();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("libtorch error").trim();
        let message = format!("{LIBTORCH}{first}");
        let lower = first.to_ascii_lowercase();
        if lower.contains("out of memory") || lower.contains("can't allocate memory") || lower.contains("failed to allocate") {
            PrismaError::OutOfMemory(message)
        } else if SHAPE_MESSAGES.iter().any(|m| lower.contains(m)) {
            PrismaError::Shape(message)
        } else {
            PrismaError::Internal(message)
        }
    }
}

/// libtorch's wording for operands whose shapes do not fit together (ATen's shape checks).
const SHAPE_MESSAGES: &[&str] = &[
    "size mismatch",
    "shapes cannot be multiplied",
    "must match the size of tensor",
    "is invalid for input of size",
    "expected input",
    "shape mismatch",
];

pub type Result<T> = std::result::Result<T, PrismaError>;

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn every_code_is_listed_once() {
        let codes = codes();
        let mut seen = std::collections::HashSet::new();
        assert!(codes.iter().all(|c| seen.insert(*c)), "a code is listed twice");
        assert!(VARIANT_CODES.iter().all(|c| codes.contains(c)));
        assert!(codes.contains(&PrismaError::OutOfMemory(String::new()).code()));
    }

    #[test]
    fn user_caused_libtorch_failures_get_user_facing_codes() {
        // Real libtorch failures, not hand-written messages.
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
        let e = PrismaError::from(a.f_matmul(&b).expect_err("mismatched matmul fails"));
        assert_eq!(e.code(), "E_SHAPE", "{e}");
        assert!(e.hint().is_some());
        let e = PrismaError::from(a.f_view([7]).expect_err("bad view fails"));
        assert_eq!(e.code(), "E_SHAPE", "{e}");
        let huge = Tensor::f_empty([1 << 40], (Kind::Float, Device::Cpu)).expect_err("4 TiB cannot be allocated");
        let e = PrismaError::from(huge);
        assert_eq!(e.code(), "E_OUT_OF_MEMORY", "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn payload_carries_structured_fields() {
        let e = PrismaError::WeightsNonFinite { file: "m/model.safetensors".into(), tensor: "w".into(), nan: 2, inf: 0 };
        let p = e.payload();
        assert_eq!(p.code, "E_WEIGHTS_NONFINITE");
        assert_eq!(p.data, Some(json!({ "file": "m/model.safetensors", "tensor": "w", "nan": 2, "inf": 0 })));
        assert_eq!(PrismaError::Argument("x".into()).payload().data, None);
    }
}
