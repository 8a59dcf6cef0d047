// tessera/nn/linear.hpp — nn::Linear<D, T>: y = x @ weight^T (+ bias), with
// weight in Hugging Face's [out, in] layout, so checkpoint tensors are moved
// in as they are stored. The layer lives on D (its parameters are Tensor<D, T>)
// and holds no placement logic: an input on another device is a compile error
// naming both devices, and moving data is the caller's explicit to<D>(x).
#pragma once

#include <optional>
#include <utility>

#include "../ops/matmul.hpp"

namespace tessera::nn {

template <Device D, FloatType T = bf16>
class Linear {
 public:
  using device_type = D;
  using element_type = T;

  // A layer without bias; weight is [out_features, in_features].
  explicit Linear(Tensor<D, T> weight) : weight_(std::move(weight)) { check_weight(); }

  // A layer with bias [out_features].
  Linear(Tensor<D, T> weight, Tensor<D, T> bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
    check_weight();
    check_bias();
  }

  // x [..., in_features] -> [..., out_features].
  template <AnyTensor X>
  Tensor<D, T> forward(const X& x) const {
    require_same_device<D, device_of<X>>();
    require_same_dtype<T, element_of<X>>();
    // Only reached with a matching input; otherwise the gate above is the one error.
    if constexpr (!ops::detail::float_operands_on<D, T, X>) return {};
    else return bias_ ? ops::linear(x, weight_, *bias_) : ops::linear(x, weight_);
  }

  std::int64_t in_features() const { return weight_.dim(1); }
  std::int64_t out_features() const { return weight_.dim(0); }
  const Tensor<D, T>& weight() const noexcept { return weight_; }
  // The bias, or nullopt for a layer built without one.
  const std::optional<Tensor<D, T>>& bias() const noexcept { return bias_; }

 private:
  void check_weight() const {
    if (weight_.rank() != 2) {
      throw ShapeError(detail::concat("nn::Linear: weight ", weight_.shape().to_string(),
                                      " must be 2-D [out_features, in_features]"));
    }
  }
  void check_bias() const {
    if (bias_->rank() != 1 || bias_->dim(0) != weight_.dim(0)) {
      throw ShapeError(detail::concat("nn::Linear: bias ", bias_->shape().to_string(), " must be [",
                                      weight_.dim(0), "] for weight ", weight_.shape().to_string()));
    }
  }

  Tensor<D, T> weight_;
  std::optional<Tensor<D, T>> bias_;
};

}  // namespace tessera::nn
