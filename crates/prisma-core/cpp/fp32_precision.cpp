// libtorch's fp32 precision settings for CUDA, which tch does not expose. libtorch lets cuDNN
// convolutions run in TF32 by default (10-bit mantissa), which puts a ViT's patch embedding ~1e-3
// off CPU fp32 and the fidelity claim (1e-4) out of reach; device.rs asks for IEEE fp32 instead.
// Context.h pulls in headers that trip -Wunused-parameter (cc's -Wextra); they are libtorch's.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Context.h>
#pragma GCC diagnostic pop

#include <string>

extern "C" void prisma_cuda_conv_ieee() {
  at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
}

// Writes "ieee", "tf32", "bf16" or "none" for CUDA convolutions and matmuls.
static void copy_name(at::Float32Op op, char *out, size_t len) {
  std::string s = at::precision2str(at::globalContext().float32Precision(at::Float32Backend::CUDA, op));
  if (len == 0) return;
  size_t n = s.size() < len - 1 ? s.size() : len - 1;
  s.copy(out, n);
  out[n] = '\0';
}

extern "C" void prisma_cuda_fp32_precision(char *conv, char *matmul, size_t len) {
  copy_name(at::Float32Op::CONV, conv, len);
  copy_name(at::Float32Op::MATMUL, matmul, len);
}
