// libtorch's fp32 precision settings for CUDA, which tch does not expose. libtorch lets cuDNN
// convolutions run in TF32 by default (10-bit mantissa), which puts a ViT's patch embedding ~1e-3
// off CPU fp32 and the fidelity claim (1e-4) out of reach; device.rs turns it off when CUDA is
// asked for. These are settings of libtorch's global context: they need no GPU to set or read.
// Context.h pulls in headers that trip -Wunused-parameter (cc's -Wextra); they are libtorch's.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Context.h>
#pragma GCC diagnostic pop

// What Python's `torch.backends.cudnn.allow_tf32 = False` does: convolutions and RNNs both, the
// legacy flag and the per-operator settings kept consistent (libtorch refuses a mix of the two).
extern "C" void prisma_cuda_no_tf32() { at::globalContext().setAllowTF32CuDNN(false); }

// Whether CUDA convolutions and matmuls may use TF32 (1 yes, 0 no), and whether the settings are
// consistent (the operator-less query, which throws on a mix of legacy and new settings, answers).
extern "C" void prisma_cuda_tf32_state(int *conv, int *matmul, int *consistent) {
  auto &ctx = at::globalContext();
  *conv = ctx.allowTF32CuDNN(at::Float32Op::CONV) ? 1 : 0;
  *matmul = ctx.allowTF32CuBLAS() ? 1 : 0;
  try {
    (void)ctx.allowTF32CuDNN();
    *consistent = 1;
  } catch (...) {
    *consistent = 0;
  }
}
