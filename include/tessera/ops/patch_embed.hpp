// tessera/ops/patch_embed.hpp — vision patch embeddings: a convolution whose
// stride equals its kernel (ViT's Conv2d, Qwen2.5-VL's temporal Conv3d), done
// as im2col + GEMM. Each non-overlapping patch is flattened in (C, kt, kh, kw)
// order, which is the order of weight.reshape(O, -1), so the GEMM is
// ops::linear's patches @ weight2d^T (+ bias) with no weight copy.
// Tokens come out in row-major patch order: (t, h, w) grid index flattened.
// On CUDA the im2col is a kernel (ops/cuda/patch_embed.cuh) and the GEMM is
// the same ops::linear call, on the device.
#pragma once

#include <array>
#include <cstring>

#include "cuda/patch_embed.cuh"
#include "matmul.hpp"

namespace tessera::ops {

namespace detail {

// Copies every kernel-sized patch of `src` [B, C, S_0, ..., S_{R-1}] (any
// strides) into one row of the contiguous `dst` [B, P, C*k_0*...*k_{R-1}]:
// patches in row-major grid order, each flattened in (C, k_0, ..., k_{R-1})
// order. Serial, like the other passes around a GEMM (see matmul.hpp).
template <std::size_t R, Device D, class T>
void cpu_im2col(T* dst, const TensorView<D, const T>& src, const std::array<std::int64_t, R>& kernel) {
  const Strides& st = src.strides();
  std::array<std::int64_t, R> grid{};
  std::int64_t patches = 1, runs_per_channel = 1;
  for (std::size_t s = 0; s < R; ++s) {
    grid[s] = src.dim(static_cast<int>(2 + s)) / kernel[s];
    patches *= grid[s];
    if (s + 1 < R) runs_per_channel *= kernel[s];
  }
  const std::int64_t channels = src.dim(1);
  const std::int64_t run = kernel[R - 1];  // the innermost kernel axis is copied as one run
  const std::int64_t run_stride = st[R + 1];
  const std::int64_t row_len = channels * runs_per_channel * run;
  const std::int64_t rows = src.dim(0) * patches;
  const T* base = src.raw();
  for (std::int64_t row = 0; row < rows; ++row) {
    // The patch's first element: batch offset plus grid position times kernel.
    std::int64_t origin = (row / patches) * st[0];
    for (std::int64_t p = row % patches, s = static_cast<std::int64_t>(R) - 1; s >= 0; --s) {
      const auto us = static_cast<std::size_t>(s);
      origin += (p % grid[us]) * kernel[us] * st[us + 2];
      p /= grid[us];
    }
    T* out = dst + row * row_len;
    for (std::int64_t r = 0; r < channels * runs_per_channel; ++r) {
      // Run r is (channel, k_0, ..., k_{R-2}) in row-major order.
      std::int64_t offset = origin;
      std::int64_t q = r;
      for (std::int64_t s = static_cast<std::int64_t>(R) - 2; s >= 0; --s) {
        const auto us = static_cast<std::size_t>(s);
        offset += (q % kernel[us]) * st[us + 2];
        q /= kernel[us];
      }
      offset += q * st[1];
      const T* in = base + offset;
      if (run_stride == 1) {
        std::memcpy(out, in, static_cast<std::size_t>(run) * sizeof(T));
      } else {
        for (std::int64_t i = 0; i < run; ++i) out[i] = in[i * run_stride];
      }
      out += run;
    }
  }
}

// The geometry launch_im2col reads `src` [B, C, S_0, ..., S_{R-1}] with.
template <std::size_t R, Device D, class T>
cuda::Im2colLayout im2col_layout(const TensorView<D, const T>& src, const std::array<std::int64_t, R>& kernel) {
  static_assert(R >= 1 && R <= 3);
  cuda::Im2colLayout l;
  l.spatial_rank = static_cast<int>(R);
  l.batch = src.dim(0);
  l.channels = src.dim(1);
  l.batch_stride = src.stride(0);
  l.channel_stride = src.stride(1);
  for (std::size_t s = 0; s < R; ++s) {
    const int axis = static_cast<int>(s) + 2;
    l.kernel[s] = kernel[s];
    l.grid[s] = src.dim(axis) / kernel[s];
    l.spatial_stride[s] = src.stride(axis);
  }
  return l;
}

// Checks the patch embedding's shapes; returns the kernel sizes.
template <std::size_t R>
std::array<std::int64_t, R> patch_kernel(const Shape& input, const Shape& weight, const Shape* bias,
                                         std::string_view op) {
  static constexpr std::array<const char*, 3> axis_names3 = {"time", "height", "width"};
  const char* const* names = axis_names3.data() + (3 - R);  // 2-D: height, width
  constexpr int rank = static_cast<int>(R) + 2;
  check(input.rank() == rank && weight.rank() == rank, op, "input ", input.to_string(), " must be [B, C",
        R == 3 ? ", T" : "", ", H, W] and weight ", weight.to_string(), " [O, C", R == 3 ? ", kt" : "", ", kh, kw]");
  check(input[1] == weight[1], op, "input ", input.to_string(), " has ", input[1], " channels but weight ",
        weight.to_string(), " expects ", weight[1]);
  std::array<std::int64_t, R> kernel{};
  for (std::size_t s = 0; s < R; ++s) {
    const int axis = static_cast<int>(s) + 2;
    kernel[s] = weight[axis];
    check(kernel[s] > 0, op, "weight ", weight.to_string(), " has an empty kernel ", names[s]);
    check(input[axis] % kernel[s] == 0, op, "input ", input.to_string(), " does not divide into weight ",
          weight.to_string(), "'s patches: ", names[s], " ", input[axis], " is not a multiple of the kernel ",
          names[s], " ", kernel[s]);
  }
  if (bias) {
    check(bias->rank() == 1 && (*bias)[0] == weight[0], op, "bias ", bias->to_string(), " must be [", weight[0],
          "] for weight ", weight.to_string());
  }
  return kernel;
}

// input [B, C, S...] and weight [O, C, k...] -> [B, patches, O].
template <std::size_t R, Device D, class T>
Tensor<D, T> patch_embed(const TensorView<D, const T>& input, const TensorView<D, const T>& weight,
                         const std::optional<TensorView<D, const T>>& bias, std::string_view op) {
  const Shape bias_shape = bias ? bias->shape() : Shape{};
  const auto kernel = patch_kernel<R>(input.shape(), weight.shape(), bias ? &bias_shape : nullptr, op);
  std::int64_t patches = 1;
  for (std::size_t s = 0; s < R; ++s) patches *= input.dim(static_cast<int>(s) + 2) / kernel[s];
  std::int64_t patch_len = input.dim(1);  // C * k_0 * ... * k_{R-1}
  for (std::size_t s = 0; s < R; ++s) patch_len *= kernel[s];
  Tensor<D, T> columns({input.dim(0), patches, patch_len});
  if (columns.numel() > 0) {
    if constexpr (is_cpu_v<D>) {
      cpu_im2col<R>(columns.raw(), input, kernel);
    } else {
      cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
        cuda::launch_im2col<T>(ctx, columns.device_ptr().get(), input.device_ptr().get(),
                               im2col_layout<R>(input, kernel));
      });
    }
  }
  // weight as [O, C*k...]: a reshape of the contiguous weight (copied only
  // when the caller passed a non-contiguous view).
  Tensor<D, T> packed;
  TensorView<D, const T> w = weight;
  if (!w.is_contiguous()) {
    packed = contiguous(weight);
    w = packed.view();
  }
  return linear<D, T>(columns.view(), w.reshape({weight.dim(0), patch_len}), bias, op);
}

}  // namespace detail

// Conv2d with stride = kernel: images [B, C, H, W], weight [O, C, kh, kw]
// -> [B, (H/kh)*(W/kw), O], tokens in row-major patch order. H and W must be
// multiples of kh and kw.
template <AnyTensor I, AnyTensor W>
Tensor<device_of<I>, element_of<I>> patch_embed2d(const I& images, const W& weight) {
  using D = device_of<I>;
  using T = element_of<I>;
  require_same_device<D, device_of<W>>();
  require_same_dtype<T, element_of<W>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W>) return {};  // a gate above has already failed
  else return detail::patch_embed<2, D, T>(as_view(images), as_view(weight), std::nullopt, "ops::patch_embed2d");
}

// As above, plus bias [O].
template <AnyTensor I, AnyTensor W, AnyTensor Bias>
Tensor<device_of<I>, element_of<I>> patch_embed2d(const I& images, const W& weight, const Bias& bias) {
  using D = device_of<I>;
  using T = element_of<I>;
  require_same_device<D, device_of<W>, device_of<Bias>>();
  require_same_dtype<T, element_of<W>, element_of<Bias>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W, Bias>) return {};  // a gate above has already failed
  else return detail::patch_embed<2, D, T>(as_view(images), as_view(weight), as_view(bias), "ops::patch_embed2d");
}

// Conv3d with stride = kernel: video [B, C, T, H, W], weight [O, C, kt, kh, kw]
// -> [B, (T/kt)*(H/kh)*(W/kw), O], tokens in row-major (t, h, w) patch order.
template <AnyTensor V, AnyTensor W>
Tensor<device_of<V>, element_of<V>> patch_embed3d(const V& video, const W& weight) {
  using D = device_of<V>;
  using T = element_of<V>;
  require_same_device<D, device_of<W>>();
  require_same_dtype<T, element_of<W>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W>) return {};  // a gate above has already failed
  else return detail::patch_embed<3, D, T>(as_view(video), as_view(weight), std::nullopt, "ops::patch_embed3d");
}

// As above, plus bias [O].
template <AnyTensor V, AnyTensor W, AnyTensor Bias>
Tensor<device_of<V>, element_of<V>> patch_embed3d(const V& video, const W& weight, const Bias& bias) {
  using D = device_of<V>;
  using T = element_of<V>;
  require_same_device<D, device_of<W>, device_of<Bias>>();
  require_same_dtype<T, element_of<W>, element_of<Bias>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W, Bias>) return {};  // a gate above has already failed
  else return detail::patch_embed<3, D, T>(as_view(video), as_view(weight), as_view(bias), "ops::patch_embed3d");
}

}  // namespace tessera::ops
