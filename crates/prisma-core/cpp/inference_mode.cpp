// libtorch's InferenceMode guard, which tch does not expose. Inside it, ops skip the autograd and
// view-tracking dispatch layers that no_grad still passes through (~12% of a tiny model's forward,
// measured in C++ on this project's op mix). The tensors it creates can never join an autograd graph,
// so Rust opens it only around work whose tensors do not outlive the call (see inference_mode.rs).
#include <c10/core/InferenceMode.h>

extern "C" void *prisma_inference_mode_enter() { return new c10::InferenceMode(true); }

extern "C" void prisma_inference_mode_exit(void *guard) { delete static_cast<c10::InferenceMode *>(guard); }
