//! The one conversion from core errors to JS errors, panic containment, and tensor marshalling.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::PrismaError;

#[napi(object)]
pub struct TensorData {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub data: Float32Array,
}

#[napi(object)]
pub struct TensorInput {
    pub name: Option<String>,
    pub shape: Vec<i64>,
    pub data: Float32Array,
}

/// `E_CODE: message` — src/native.ts parses the prefix into `err.code`.
pub fn to_js_error(e: PrismaError) -> Error {
    Error::new(Status::GenericFailure, format!("{}: {}", e.code(), e))
}

/// Runs `f`, turning a panic into E_INTERNAL so native code never takes Node down.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let first = what.lines().next().unwrap_or("").to_string();
            Err(Error::new(Status::GenericFailure, format!("E_INTERNAL: native panic: {first}")))
        }
    }
}

/// Locks a shared model or trainer; a lock poisoned by an earlier panic is E_INTERNAL.
pub fn lock<T>(shared: &std::sync::Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    shared.lock().map_err(|_| Error::from_reason("E_INTERNAL: lock poisoned by an earlier failure"))
}
