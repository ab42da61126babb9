// Int8 linear maps for the library's own small networks (the feature-level draft): weights
// quantised once to int8 and packed for FBGEMM, activations quantised per call. libtorch has
// the kernels (ATen's fbgemm_* functions) but tch does not bind them; these few C functions
// do, over tch's tensor handles (`at::Tensor*`, owned by the Rust side).
//
// Every function returns nullptr on success and otherwise a message the caller frees with
// blockwise_int8_free_message.

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/fbgemm_linear_int8_weight_fp32_activation.h>
#include <ATen/ops/fbgemm_linear_quantize_weight.h>
#include <ATen/ops/fbgemm_pack_quantized_matrix.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace {

// ATen marks these functions deprecated with a once-per-process warning; the library calls
// them on purpose, so the warning is not passed on to the user.
class Quiet : public c10::WarningHandler {
 public:
  void process(const c10::Warning&) override {}
};

char* message(const std::exception& e) {
  // The first line only: libtorch appends C++ frames and source locations after it.
  std::string what = e.what();
  what = what.substr(0, what.find('\n'));
  char* out = static_cast<char*>(std::malloc(what.size() + 1));
  if (out != nullptr) std::memcpy(out, what.c_str(), what.size() + 1);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    Quiet quiet;
    c10::WarningUtils::WarningHandlerGuard guard(&quiet);
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e);
  }
}

}  // namespace

extern "C" {

// 1 where this libtorch has FBGEMM's kernels (x86-64 builds), else 0.
int blockwise_int8_available() {
  try {
    const auto& engines = at::globalContext().supportedQEngines();
    return std::find(engines.begin(), engines.end(), at::QEngine::FBGEMM) != engines.end();
  } catch (...) {
    return 0;
  }
}

// Quantises `weight` ([out, in], float32) and packs it: int8 weights, their packed form,
// column offsets, and the scale and zero point of the quantisation.
char* blockwise_int8_pack(const at::Tensor* weight, at::Tensor** q, at::Tensor** packed,
                          at::Tensor** col_offsets, double* scale, int64_t* zero_point) {
  return guarded([&] {
    auto w = weight->contiguous();
    auto parts = at::fbgemm_linear_quantize_weight(w);
    auto pack = at::fbgemm_pack_quantized_matrix(std::get<0>(parts));
    *q = new at::Tensor(std::get<0>(parts));
    *packed = new at::Tensor(pack);
    *col_offsets = new at::Tensor(std::get<1>(parts));
    *scale = std::get<2>(parts);
    *zero_point = std::get<3>(parts);
  });
}

// `x · Wᵀ + bias` for float32 `x` ([.., in]) through the packed int8 weights.
char* blockwise_int8_linear(const at::Tensor* x, const at::Tensor* q, const at::Tensor* packed,
                            const at::Tensor* col_offsets, double scale, int64_t zero_point,
                            const at::Tensor* bias, at::Tensor** out) {
  return guarded([&] {
    auto y = at::fbgemm_linear_int8_weight_fp32_activation(
        x->contiguous(), *q, *packed, *col_offsets, scale, zero_point, *bias);
    *out = new at::Tensor(y);
  });
}

void blockwise_int8_free_message(char* m) { std::free(m); }

}  // extern "C"
