//! The one conversion from core errors to JS errors, panic containment, and tensor marshalling.
//!
//! Errors are data across the binding: a core error becomes a JS `Error` whose `code`, `message`,
//! `hint` and `data` properties are the core's [`ErrorPayload`]. Inside the binding the payload
//! rides in a napi `Error` (as JSON in its reason, which JS never sees); [`js_error`] turns it into
//! the JS object at the two places an error leaves for JS: a settled promise (`TorchTask`, the
//! save task) and a synchronous call ([`sync`]).

use napi::bindgen_prelude::*;
use napi_derive::napi;
use prisma_core::error::ErrorPayload;
use prisma_core::PrismaError;
use serde::Deserialize;

/// A tensor from the addon: float32 values, row-major.
#[napi(object)]
pub struct TensorData {
    pub name: String,
    pub shape: Vec<i64>,
    /// Always 'float32'.
    pub dtype: String,
    pub data: Float32Array,
}

/// A tensor handed to the addon: float32 values, row-major.
#[napi(object)]
pub struct TensorInput {
    pub name: Option<String>,
    pub shape: Vec<i64>,
    pub data: Float32Array,
}

/// A core error on its way to JS (see the module comment).
pub fn to_js_error(e: PrismaError) -> Error {
    carry(&e.payload())
}

/// An error of the binding itself (a panic, a poisoned lock): a bug, E_INTERNAL.
pub fn internal(message: impl Into<String>) -> Error {
    carry(&ErrorPayload { code: "E_INTERNAL", message: message.into(), hint: None, data: None })
}

fn carry(payload: &ErrorPayload) -> Error {
    match serde_json::to_string(payload) {
        Ok(json) => Error::new(Status::GenericFailure, json),
        Err(_) => Error::new(Status::GenericFailure, payload.message.clone()),
    }
}

#[derive(Deserialize)]
struct Carried {
    code: String,
    message: String,
    hint: Option<String>,
    data: Option<serde_json::Value>,
}

/// The JS Error for `e`: `code`, `message`, and `hint`/`data` when present. An error napi itself
/// raised (an argument of the wrong JS type) carries no payload and becomes E_INTERNAL.
pub fn js_error(env: &Env, e: Error) -> Error {
    let carried = serde_json::from_str::<Carried>(&e.reason).unwrap_or_else(|_| Carried {
        code: "E_INTERNAL".into(),
        message: format!("{}: {}", e.status.as_ref(), e.reason),
        hint: None,
        data: None,
    });
    let build = || -> Result<Error> {
        let mut obj = env.create_error(Error::new(Status::GenericFailure, carried.message.clone()))?;
        obj.set_named_property("code", carried.code.as_str())?;
        if let Some(hint) = &carried.hint {
            obj.set_named_property("hint", hint.as_str())?;
        }
        if let Some(data) = &carried.data {
            obj.set_named_property("data", env.to_js_value(data)?)?;
        }
        Ok(Error::from(obj.to_unknown()))
    };
    build().unwrap_or(e)
}

/// Runs a synchronous entry point: a panic becomes E_INTERNAL, and an error leaves as a JS Error
/// with its payload (see [`js_error`]).
pub fn sync<T>(env: &Env, f: impl FnOnce() -> Result<T>) -> Result<T> {
    guard(f).map_err(|e| js_error(env, e))
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
            Err(internal(format!("native panic: {first}")))
        }
    }
}

/// Locks a shared model or trainer; a lock poisoned by an earlier panic is E_INTERNAL.
pub fn lock<T>(shared: &std::sync::Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    shared.lock().map_err(|_| internal("lock poisoned by an earlier failure"))
}
