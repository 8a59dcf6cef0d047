// tessera/ops/rope.hpp — rotary position embedding, "rotate half" (NeoX)
// convention as in transformers' Qwen2 / Llama / InternLM2:
//
//   q_embed = q * cos + rotate_half(q) * sin,  rotate_half(x) = cat(-x[d/2:], x[:d/2])
//
// rope_tables builds the cos/sin tables from integer positions that live on
// the same device as the activations (position ids and inv_freq left on the
// wrong device are a classic multi-GPU failure: here they are typed).
// apply_rope rotates any [S, H, Dh] tensor with any [S, rot] tables, so M-RoPE
// and the 2-D vision RoPE of Qwen2.5-VL only differ in how the tables are built.
// CUDA launchers: ops/cuda/rope.cuh.
#pragma once

#include <array>
#include <cmath>
#include <span>
#include <vector>

#include "common.hpp"
#include "shape.hpp"
#include "cuda/rope.cuh"

namespace tessera::ops {

// cos and sin tables for apply_rope, both float32 [S, rot_dim], row s for the
// s-th position. `auto [cos, sin] = ops::rope_tables(positions, 128, 1e6);`
template <Device D>
struct RopeTables {
  Tensor<D, float> cos;
  Tensor<D, float> sin;
};

// theta^(float(2i) / rot_dim) for i < rot_dim / 2: the float32 power of
// transformers' default RoPE (theta taken as float32, the power computed in
// double and rounded once).
inline float rope_power(std::int64_t i, std::int64_t rot_dim, double theta) {
  const auto base = static_cast<double>(static_cast<float>(theta));
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(rot_dim);
  return static_cast<float>(std::pow(base, static_cast<double>(exponent)));
}

// The default frequencies inv_freq[i] = 1 / theta^(float(2i) / rot_dim),
// float32 as below; scaled RoPE variants start from these or from
// rope_power (nn/rope_variants.hpp).
inline std::vector<float> rope_inv_freq(std::int64_t rot_dim, double theta) {
  std::vector<float> inv_freq(static_cast<std::size_t>(rot_dim / 2));
  for (std::int64_t i = 0; i < rot_dim / 2; ++i) inv_freq[static_cast<std::size_t>(i)] = 1.0f / rope_power(i, rot_dim, theta);
  return inv_freq;
}

// Host tables from host positions and any frequencies (a scaled RoPE
// variant's), each entry multiplied by `scale` in float32 as transformers'
// `emb.cos() * attention_scaling` does: cos[s, i] = cos[s, i + half] =
// float(cos(float(p_s) * inv_freq[i])) * scale, and likewise sin. Move them
// to a device with to<D>.
inline RopeTables<Host> rope_tables_host(std::span<const std::int64_t> positions, std::span<const float> inv_freq,
                                         float scale) {
  const auto seq = static_cast<std::int64_t>(positions.size());
  const auto half = static_cast<std::int64_t>(inv_freq.size());
  detail::check(half > 0, "ops::rope_tables_host", "needs at least one frequency");
  const std::int64_t rot_dim = 2 * half;
  RopeTables<Host> tables{Tensor<Host, float>(Shape{seq, rot_dim}), Tensor<Host, float>(Shape{seq, rot_dim})};
  float* pc = tables.cos.raw();
  float* psn = tables.sin.raw();
  for (std::int64_t s = 0; s < seq; ++s) {
    const auto p = static_cast<float>(positions[static_cast<std::size_t>(s)]);
    for (std::int64_t i = 0; i < half; ++i) {
      const double freq = static_cast<double>(p * inv_freq[static_cast<std::size_t>(i)]);
      const float c = static_cast<float>(std::cos(freq)) * scale;
      const float sn = static_cast<float>(std::sin(freq)) * scale;
      pc[s * rot_dim + i] = pc[s * rot_dim + i + half] = c;
      psn[s * rot_dim + i] = psn[s * rot_dim + i + half] = sn;
    }
  }
  return tables;
}

// Rotary tables for integer positions [S] (int32 or int64, on device D), for
// rotary dimension rot_dim (even; the head dimension for full rotation) and
// base theta. The float32 arithmetic of transformers' default RoPE is
// reproduced step by step:
//
//   inv_freq[i] = 1 / theta^(float(2i) / rot_dim)   (float32 exponent and
//                 division; theta is taken as float32; the power is computed
//                 in double and rounded once to float32, where torch's CPU
//                 powf is within 1 ulp of that)
//   freq[s, i]  = float(positions[s]) * inv_freq[i]  (one float32 multiply,
//                 what HF's inv_freq @ position_ids matmul gives)
//   cos[s, i] = cos[s, i + rot_dim/2] = cos(freq[s, i]) (emb = cat(freqs, freqs)),
//   and likewise sin; cos/sin of the float32 argument are evaluated in
//   double and rounded to float32 (torch's float32 cos/sin are within 1 ulp).
//
// So at large positions the tables carry HF's float32 argument error (about
// |position| * 2^-24 radians), not the exact rotation, exactly as HF does.
template <AnyTensor P>
RopeTables<device_of<P>> rope_tables(const P& positions, std::int64_t rot_dim, double theta) {
  using D = device_of<P>;
  using I = element_of<P>;
  static_assert(IndexType<I>, "tessera: ops::rope_tables needs integer positions (int32 or int64)");
  const auto vp = as_view(positions);
  detail::check(vp.rank() == 1, "ops::rope_tables", "positions must have shape [S], got ", vp.shape().to_string());
  detail::check(rot_dim > 0 && rot_dim % 2 == 0, "ops::rope_tables", "rot_dim must be even and positive, got ",
                rot_dim);
  detail::check(theta > 0.0, "ops::rope_tables", "theta must be positive, got ", theta);
  const std::int64_t seq = vp.dim(0);
  RopeTables<D> tables{Tensor<D, float>(Shape{seq, rot_dim}), Tensor<D, float>(Shape{seq, rot_dim})};
  if constexpr (is_cpu_v<D>) {
    const std::int64_t half = rot_dim / 2;
    const std::vector<float> inv_freq = rope_inv_freq(rot_dim, theta);
    const I* pos = vp.raw();
    const std::int64_t ps = vp.stride(0);
    float* pc = tables.cos.raw();
    float* psn = tables.sin.raw();
    TESSERA_OMP_PARALLEL_FOR_IF(seq * rot_dim * detail::kTranscendentalCost >= detail::kParallelMinElements)
    for (std::int64_t s = 0; s < seq; ++s) {
      const auto p = static_cast<float>(pos[s * ps]);
      float* crow = pc + s * rot_dim;
      float* srow = psn + s * rot_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        const double freq = static_cast<double>(p * inv_freq[static_cast<std::size_t>(i)]);
        const auto c = static_cast<float>(std::cos(freq));
        const auto sn = static_cast<float>(std::sin(freq));
        crow[i] = crow[i + half] = c;
        srow[i] = srow[i + half] = sn;
      }
    }
  } else {
    // The same float32 recipe, step by step, one thread per (s, i).
    detail::cuda_launch<D>("ops::rope_tables", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_rope_tables<I>(ctx, tables.cos.device_ptr().get(), tables.sin.device_ptr().get(),
                                  vp.device_ptr().get(), vp.stride(0), seq, rot_dim, static_cast<float>(theta));
    });
  }
  return tables;
}

// One piece of a composed rotary table: `size` frequencies starting at
// frequency `begin` of the tables of position axis `axis`.
struct RopeSection {
  std::size_t axis = 0;
  std::int64_t begin = 0;
  std::int64_t size = 0;
};

// Rotary tables for positions with several axes, each axis with its own
// rope_tables [S, 2 * half_a]: the first half of every output row is the
// `sections` in order, each read from the first half of its axis' tables,
// and the second half repeats them from the second halves (transformers'
// emb = cat(freqs, freqs) after recomposing the frequencies). Qwen2.5-VL's
// M-RoPE splits one frequency list among (t, h, w); its vision RoPE puts
// the row and column frequency lists side by side. All tables on device D.
template <Device D>
RopeTables<D> compose_rope_tables(std::span<const RopeTables<D>> axes, std::span<const RopeSection> sections) {
  const auto compose = [&](Tensor<D, float> RopeTables<D>::*member) {
    std::vector<TensorView<D, const float>> pieces;
    for (const bool second_half : {false, true}) {
      for (const RopeSection& s : sections) {
        detail::check_value(s.axis < axes.size(), "ops::compose_rope_tables", "section axis ", s.axis, " but only ",
                      axes.size(), " position axes");
        const Tensor<D, float>& table = axes[s.axis].*member;
        const std::int64_t begin = s.begin + (second_half ? table.dim(1) / 2 : 0);
        pieces.push_back(table.view().slice(1, begin, begin + s.size));
      }
    }
    return ops::concat(std::span<const TensorView<D, const float>>(pieces), 1);
  };
  return RopeTables<D>{compose(&RopeTables<D>::cos), compose(&RopeTables<D>::sin)};
}

// Applies rotary embedding to x: [S, H, Dh] (tokens-major: sequence, heads,
// head dim; a batch is folded into S, with tables for the flattened tokens)
// with tables cos, sin: [S, rot], rot even and <= Dh. The first rot dims of
// every head rotate, the rest pass through unchanged (partial rotary):
//
//   out[i] = x[i] * cos[i] - x[i + rot/2] * sin[i]   for i < rot/2
//   out[i] = x[i] * cos[i] + x[i - rot/2] * sin[i]   for rot/2 <= i < rot
//   out[i] = x[i]                                    for rot <= i < Dh
//
// cos/sin may be any float type (rope_tables gives float32) and all three
// tensors share one device. Computed in float and rounded once to T. HF
// instead casts cos/sin to q's dtype and evaluates q*cos + rotate_half(q)*sin
// in that dtype (three roundings for bf16), so bf16 results can differ from
// HF's by about one bf16 ulp; in float32 the two agree to float rounding.
// x may be a strided view (a q or k slice of a fused qkv); the output is contiguous.
template <AnyTensor X, AnyTensor C, AnyTensor S>
Tensor<device_of<X>, element_of<X>> apply_rope(const X& x, const C& cos, const S& sin) {
  using D = device_of<X>;
  using T = element_of<X>;
  using TC = element_of<C>;
  require_same_device<D, device_of<C>, device_of<S>>();
  require_same_dtype<TC, element_of<S>>();
  static_assert(FloatType<T>, "tessera: ops::apply_rope needs a floating-point x (float, bf16 or f16)");
  static_assert(FloatType<TC>, "tessera: ops::apply_rope needs floating-point cos/sin tables");
  const auto vx = as_view(x);
  const auto vc = as_view(cos);
  const auto vs = as_view(sin);
  detail::check(vx.rank() == 3, "ops::apply_rope", "x must have shape [S, H, Dh], got ", vx.shape().to_string());
  detail::check(vc.rank() == 2 && vc.shape() == vs.shape(), "ops::apply_rope",
                "cos and sin must have the same shape [S, rot], got cos ", vc.shape().to_string(), " and sin ",
                vs.shape().to_string());
  detail::check(vc.dim(0) == vx.dim(0), "ops::apply_rope", "cos/sin ", vc.shape().to_string(), " have ", vc.dim(0),
                " rows but x ", vx.shape().to_string(), " has ", vx.dim(0), " tokens");
  const std::int64_t rot = vc.dim(1);
  detail::check(rot % 2 == 0, "ops::apply_rope", "the rotary dimension (last dim of cos/sin ",
                vc.shape().to_string(), ") must be even, got ", rot);
  detail::check(rot <= vx.dim(2), "ops::apply_rope", "the rotary dimension ", rot,
                " exceeds the head dimension of x ", vx.shape().to_string());
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    const std::int64_t seq = vx.dim(0), heads = vx.dim(1), dh = vx.dim(2), half = rot / 2;
    const std::int64_t xs0 = vx.stride(0), xs1 = vx.stride(1), xs2 = vx.stride(2);
    const std::int64_t cs0 = vc.stride(0), cs1 = vc.stride(1), ss0 = vs.stride(0), ss1 = vs.stride(1);
    const T* px = vx.raw();
    const TC* pc = vc.raw();
    const TC* ps = vs.raw();
    T* po = out.raw();
    const std::int64_t rows = seq * heads;
    TESSERA_OMP_PARALLEL_FOR_IF(rows * dh >= detail::kParallelMinElements)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t s = r / heads, h = r % heads;
      const T* xr = px + s * xs0 + h * xs1;
      const TC* cr = pc + s * cs0;
      const TC* sr = ps + s * ss0;
      T* o = po + r * dh;
      for (std::int64_t i = 0; i < half; ++i) {
        const float x1 = detail::to_float(xr[i * xs2]);
        const float x2 = detail::to_float(xr[(i + half) * xs2]);
        o[i] = detail::from_float<T>(x1 * detail::to_float(cr[i * cs1]) - x2 * detail::to_float(sr[i * ss1]));
        o[i + half] = detail::from_float<T>(x2 * detail::to_float(cr[(i + half) * cs1]) +
                                            x1 * detail::to_float(sr[(i + half) * ss1]));
      }
      for (std::int64_t i = rot; i < dh; ++i) o[i] = xr[i * xs2];
    }
  } else {
    // x, cos and sin are read in place, whatever their strides.
    detail::cuda_launch<D>("ops::apply_rope", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_apply_rope<T, TC>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx),
                                     vc.device_ptr().get(), detail::strided_layout(vc), vs.device_ptr().get(),
                                     detail::strided_layout(vs));
    });
  }
  return out;
}

// M-RoPE tables [S, head_dim] from positions [3, S] on D: column j < head_dim/2
// (and j + head_dim/2) takes the rotation of the axis whose mrope_section
// holds frequency j (sections cycle t, h, w), as transformers'
// recomposition_frequencies does with freq.split(mrope_section).
template <Device D>
ops::RopeTables<D> mrope_tables(const Tensor<D, std::int64_t>& positions, std::int64_t head_dim, double theta,
                                std::span<const std::int64_t> mrope_section) {
  if (positions.rank() != 2 || positions.dim(0) != 3) {
    throw ShapeError(detail::concat("mrope_tables: positions ", positions.shape().to_string(),
                                             " must be [3, tokens]"));
  }
  const std::int64_t seq = positions.dim(1), half = head_dim / 2;
  std::array<ops::RopeTables<D>, 3> axis;
  for (std::int64_t a = 0; a < 3; ++a) {
    axis[static_cast<std::size_t>(a)] =
        ops::rope_tables(positions.view().slice(0, a, a + 1).reshape({seq}), head_dim, theta);
  }
  // Frequency j takes the axis whose section holds it; sections cycle t, h, w.
  std::vector<ops::RopeSection> sections;
  std::int64_t begin = 0;
  for (std::size_t s = 0; s < mrope_section.size(); ++s) {
    sections.push_back({s % 3, begin, mrope_section[s]});
    begin += mrope_section[s];
  }
  if (begin != half) {
    throw ValueError(detail::concat("mrope_tables: mrope_section sums to ", begin, " but head_dim / 2 is ",
                                             half));
  }
  return ops::compose_rope_tables<D>(axis, sections);
}

}  // namespace tessera::ops
