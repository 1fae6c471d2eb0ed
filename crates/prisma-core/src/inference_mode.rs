//! libtorch's InferenceMode (compiled from cpp/inference_mode.cpp; tch exposes only no_grad).
use std::ffi::c_void;

extern "C" {
    fn prisma_inference_mode_enter() -> *mut c_void;
    fn prisma_inference_mode_exit(guard: *mut c_void);
}

/// Runs `f` in inference mode on this thread: ops skip the autograd and view-tracking layers, the
/// same kernels compute the same numbers. Only for work whose tensors stay inside `f` and whose
/// results leave as host values: a tensor made here can never be saved for backward (attribution
/// patching would fail on it) nor edited in place after the mode ends.
pub(crate) fn inference_mode<T>(f: impl FnOnce() -> T) -> T {
    struct Guard(*mut c_void);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: the pointer came from prisma_inference_mode_enter on this thread (a guard is
            // neither Send nor kept past this call) and is released exactly once, restoring the
            // thread's previous autograd state, on return or unwind alike.
            unsafe { prisma_inference_mode_exit(self.0) }
        }
    }
    // SAFETY: the shim only allocates the guard, which sets thread-local dispatch state.
    let _guard = Guard(unsafe { prisma_inference_mode_enter() });
    f()
}
