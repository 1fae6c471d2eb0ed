//! The blocks' linear layers, and which library computes them on this thread.
//!
//! By default every linear is `at::linear`: on the CPU that is MKL's sgemm, the same kernel (and so
//! the same bits) as transformers. A sweep asked for `fast_linear` switches its thread to oneDNN's
//! f32 linear (cpp/onednn_linear.cpp), whose AVX-512 kernels run large models' sweeps faster, with
//! the GELU after the MLP's first product fused into it. The two agree to float rounding, not bit
//! for bit, and a chaotic model can amplify that far past the fidelity tolerance. Hence opt-in,
//! never the default (numbers in docs/benchmarks.md, "Measurements behind choices in the code").

use super::activation::Activation;
use crate::error::{PrismaError, Result};
use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn prisma_onednn_linear_available() -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn prisma_onednn_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        post: *const c_char,
        algorithm: *const c_char,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Which library computes a block's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernels {
    /// `at::linear`: MKL sgemm on the CPU, cuBLAS on a GPU; bitwise what transformers computes.
    Aten,
    /// oneDNN's f32 linear (CPU only), an erf or tanh GELU fused into the MLP's first product.
    OneDnn,
}

impl LinearKernels {
    /// oneDNN for a model on `device` with weights of `kind`, or why it cannot be used there.
    pub fn onednn_for(device: Device, kind: Kind) -> Result<LinearKernels> {
        if device != Device::Cpu || kind != Kind::Float {
            return Err(PrismaError::Argument("fast linear layers (oneDNN) are for f32 models on the CPU".into()));
        }
        if !onednn_available() {
            return Err(PrismaError::Argument("fast linear layers need a libtorch built with oneDNN, and this one is not".into()));
        }
        Ok(LinearKernels::OneDnn)
    }
}

/// Whether this libtorch was built with oneDNN (PyTorch's x86 and arm64 CPU builds are).
pub fn onednn_available() -> bool {
    // SAFETY: looks up an operator in libtorch's dispatcher; no arguments, no side effects.
    unsafe { prisma_onednn_linear_available() == 1 }
}

thread_local! {
    static KERNELS: Cell<LinearKernels> = const { Cell::new(LinearKernels::Aten) };
}

/// Runs `f` with this thread's block linears computed by `kernels`, restoring the previous choice
/// on return or unwind. Thread-local like libtorch's own modes (no_grad, inference mode).
pub(crate) fn with_linear_kernels<T>(kernels: LinearKernels, f: impl FnOnce() -> T) -> T {
    struct Restore(LinearKernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KERNELS.with(|k| k.replace(kernels)));
    f()
}

/// `x @ w^T + b`, as nn.Linear.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match KERNELS.with(Cell::get) {
        LinearKernels::Aten => Ok(x.f_linear(w, b)?),
        LinearKernels::OneDnn => onednn_linear(x, w, b, None),
    }
}

/// `activation(x @ w^T + b)`, the GELU fused into the product where oneDNN computes it.
pub(crate) fn linear_then(x: &Tensor, w: &Tensor, b: Option<&Tensor>, activation: Activation) -> Result<Tensor> {
    // oneDNN's names for GELU's two forms: "none" is the exact (erf) one.
    let fused = match activation {
        Activation::Gelu => Some(c"none"),
        Activation::GeluTanh => Some(c"tanh"),
        _ => None,
    };
    match (KERNELS.with(Cell::get), fused) {
        (LinearKernels::OneDnn, Some(algorithm)) => onednn_linear(x, w, b, Some(algorithm)),
        _ => activation.apply(&linear(x, w, b)?),
    }
}

/// One call of the shim; `gelu` is GELU's algorithm (as `linear_then` names it) when one is fused.
fn onednn_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, gelu: Option<&CStr>) -> Result<Tensor> {
    let (post, algorithm) = match gelu {
        None => (c"none", c""),
        Some(algorithm) => (c"gelu", algorithm),
    };
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = [0 as c_char; 512];
    // SAFETY: the tensor handles are live for the call (borrowed from Rust tensors that outlive
    // it), the strings are NUL-terminated, and `err` is writable for its length. On success the
    // shim hands over a fresh heap at::Tensor, which `Tensor::from_ptr` owns and frees on drop.
    let status = unsafe {
        prisma_onednn_linear(
            x.as_ptr(),
            w.as_ptr(),
            b.map_or(std::ptr::null(), Tensor::as_ptr),
            post.as_ptr(),
            algorithm.as_ptr(),
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if status != 0 || out.is_null() {
        // SAFETY: the shim always leaves a NUL-terminated message in `err` when it fails.
        let reason = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(PrismaError::Internal(format!("oneDNN linear failed: {reason}")));
    }
    // SAFETY: see above; `out` is a new at::Tensor owned by nobody else.
    Ok(unsafe { Tensor::from_ptr(out) })
}
