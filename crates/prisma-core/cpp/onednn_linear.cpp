// A linear layer through oneDNN (libtorch's `mkldnn::_linear_pointwise`, the op TorchInductor emits
// for CPU linears), which tch cannot reach: it is registered by libtorch's mkldnn library, not
// declared among ATen's native functions that tch generates bindings for. On this project's CPU its
// AVX-512 f32 kernels run ViT-B's sweeps 10-20% faster than the MKL sgemm behind
// at::linear, and an erf/tanh GELU after the product comes free in the same pass.
//
// Called boxed through the dispatcher, so no C++ signature of the kernel is assumed. Tensors cross as
// tch's handles (at::Tensor*, heap-allocated, freed by tch); errors come back as text.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstring>
#include <optional>
#include <string>

namespace {

const std::optional<c10::OperatorHandle> &linear_pointwise() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op;
}

void copy_error(const char *what, char *err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

}  // namespace

extern "C" int prisma_onednn_linear_available() { return linear_pointwise().has_value() ? 1 : 0; }

// out = post(x @ w^T + b). `post` is "none" or "gelu"; `algorithm` is GELU's ("none" = erf, or
// "tanh"). `b` may be null. Returns 0 and sets *out, or returns 1 with the reason in err.
extern "C" int prisma_onednn_linear(const at::Tensor *x, const at::Tensor *w, const at::Tensor *b, const char *post,
                                    const char *algorithm, at::Tensor **out, char *err, size_t err_len) {
  try {
    const auto &op = linear_pointwise();
    if (!op) {
      copy_error("this libtorch has no mkldnn::_linear_pointwise (built without oneDNN)", err, err_len);
      return 1;
    }
    torch::jit::Stack stack;
    stack.reserve(6);
    stack.emplace_back(*x);
    stack.emplace_back(*w);
    stack.emplace_back(b != nullptr ? c10::IValue(*b) : c10::IValue());
    stack.emplace_back(std::string(post));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(algorithm));
    op->callBoxed(&stack);
    *out = new at::Tensor(std::move(stack.at(0)).toTensor());
    return 0;
  } catch (const std::exception &e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}
