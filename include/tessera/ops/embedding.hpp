// tessera/ops/embedding.hpp — token embedding lookup (torch.nn.functional.embedding
// without max_norm / padding_idx semantics, which only matter in training).
// CUDA launchers: ops/cuda/embedding.cuh.
#pragma once

#include <cstring>

#include "common.hpp"
#include "cuda/embedding.cuh"

namespace tessera::ops {

// Gathers rows of table [V, H] (any float dtype) by ids (int32 or int64, any
// shape, any strides, on the same device): the result has shape [ids..., H]
// and is contiguous. Every id must lie in [0, V): the first one that does not
// raises tessera::ValueError naming the id, its flat (row-major) position in
// ids, and V. Nothing is written to the result before all ids are checked.
// On CUDA the ids are checked by the gather kernel itself (a bad id is never
// dereferenced) and the call waits for its stream to learn the outcome, so the
// same ValueError is raised, synchronously; the partly written result is
// discarded with it.
template <AnyTensor W, AnyTensor I>
Tensor<device_of<W>, element_of<W>> embedding(const W& table, const I& ids) {
  using D = device_of<W>;
  using T = element_of<W>;
  using Id = element_of<I>;
  require_same_device<D, device_of<I>>();
  static_assert(FloatType<T>, "tessera: ops::embedding needs a floating-point table (float, bf16 or f16)");
  static_assert(IndexType<Id>, "tessera: ops::embedding needs integer ids (int32 or int64)");
  const auto vt = as_view(table);
  const auto vi = as_view(ids);
  detail::check(vt.rank() == 2, "ops::embedding", "table must have shape [V, H], got ", vt.shape().to_string());
  detail::check(vi.rank() < kMaxRank, "ops::embedding", "ids ", vi.shape().to_string(), " have rank ", vi.rank(),
                "; the result [ids..., H] would exceed the maximum rank ", kMaxRank);
  const std::int64_t vocab = vt.dim(0), hidden = vt.dim(1);
  Shape out_shape = vi.shape();
  out_shape.push_back(hidden);
  Tensor<D, T> out(out_shape);
  const auto id_error = [&](std::int64_t id, std::int64_t position) {
    detail::check_value(false, "ops::embedding", "id ", id, " at position ", position, " of ids ", vi.shape(),
                        " is out of range for a table of ", vocab, " rows (valid ids are 0..", vocab - 1, ")");
  };
  if constexpr (is_cpu_v<D>) {
    // Pack the ids (row-major) and validate them all before gathering.
    std::vector<std::int64_t> flat(static_cast<std::size_t>(vi.numel()));
    const Id* pi = vi.raw();
    detail::for_each_offset<1>(vi.shape(), {vi.strides()}, [&](std::int64_t k, const auto& off) {
      flat[static_cast<std::size_t>(k)] = static_cast<std::int64_t>(pi[off[0]]);
    });
    for (std::size_t k = 0; k < flat.size(); ++k) {
      const std::int64_t id = flat[k];
      if (id < 0 || id >= vocab) id_error(id, static_cast<std::int64_t>(k));
    }
    const T* pt = vt.raw();
    const std::int64_t ts0 = vt.stride(0), ts1 = vt.stride(1);
    T* po = out.raw();
    const auto count = static_cast<std::int64_t>(flat.size());
    TESSERA_OMP_PARALLEL_FOR_IF(count * hidden >= detail::kParallelMinElements)
    for (std::int64_t k = 0; k < count; ++k) {
      const T* src = pt + flat[static_cast<std::size_t>(k)] * ts0;
      T* dst = po + k * hidden;
      if (ts1 == 1) {
        std::memcpy(dst, src, static_cast<std::size_t>(hidden) * sizeof(T));
      } else {
        for (std::int64_t h = 0; h < hidden; ++h) dst[h] = src[h * ts1];
      }
    }
  } else {
    cuda::EmbeddingIdCheck ids_check;
    if (vi.numel() > 0) {
      detail::cuda_launch<D>("ops::embedding", [&](const cuda::LaunchContext& ctx) {
        Buffer<D> workspace(cuda::embedding_workspace_bytes());
        ids_check = cuda::launch_embedding<T, Id>(ctx, out.device_ptr().get(), vt.device_ptr().get(), vocab, hidden,
                                                  vt.stride(0), vt.stride(1), vi.device_ptr().get(),
                                                  detail::strided_layout(vi), workspace.get());
      });
    }
    if (ids_check.position >= 0) id_error(ids_check.id, ids_check.position);
  }
  return out;
}

}  // namespace tessera::ops
