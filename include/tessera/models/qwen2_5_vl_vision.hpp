// tessera/models/qwen2_5_vl_vision.hpp — the Qwen2.5-VL vision tower, as
// transformers' Qwen2_5_VisionTransformerPretrainedModel computes it
// (transformers 5.23; the 4.5x code computes the same):
//
//   x = pixel_values W_patch^T           (Conv3d with stride = kernel: one GEMM
//                                          on the processor's [N, C*tp*p*p] rows)
//   x = x in window order                (groups of merge^2 rows, gathered by window_index)
//   cos, sin = 2-D rotary tables          (row and column of each patch, same order)
//   for each block l:
//     h = RMSNorm1(x);  q | k | v = h Wqkv^T + b
//     q, k = RoPE(q), RoPE(k)             (in float, rounded once)
//     a = softmax(q k^T / sqrt(head_dim)) v, non-causal, within segments:
//         l in fullatt_block_indexes: one segment per frame (h*w patches of
//         one temporal slice of one item); otherwise one per window
//     x = x + a Wproj^T + b
//     x = x + down(silu(gate(RMSNorm2(x))) * up(RMSNorm2(x)))   (all with bias)
//   y = RMSNorm_q(x) viewed as [N/merge^2, merge^2*hidden]  (each 2x2 block's rows
//   y = fc2(gelu(fc1(y)))                                     are adjacent)
//   y = y in raster order                 (gathered by argsort(window_index))
//
// Windows. The merged-token grid of each frame (h/merge x w/merge) is cut
// into square windows of window_size / patch_size / merge merged tokens per
// side (4 in every published checkpoint, so 8x8 = 64 patches), padded at the
// bottom and right: transformers pads by `n - len % n`, a whole empty row or
// column of windows when the grid is already a multiple, and drops the
// resulting empty windows from cu_window_seqlens (unique_consecutive). The
// window order never moves a token to another frame or item (windows are cut
// per frame and items follow one another), so the per-frame segments of the
// full-attention blocks sit at the same rows before and after the
// permutation: transformers uses the unpermuted per-frame cu_seqlens, and so
// does this file.
//
// Rotary tables: transformers' axial RoPE uses head_dim/4 frequencies
// inv_freq[i] = 1/theta^(2i / (head_dim/2)) and lays a patch's angles out as
// [rows (hd/4) | cols (hd/4) | rows | cols]; ops::rope_tables for rot_dim
// head_dim/2 gives exactly the row (or column) angles twice, so the table is
// four column slices of two rope_tables calls. rotate_half pairs dim i with
// i + head_dim/2, which is what ops::apply_rope does with a [N, head_dim] table.
//
// Index tensors (window_index, cu_seqlens, positions) are computed on the
// host from the grids and moved to D with to<D>; everything else is ops on D,
// so the same code runs on Cpu<N> and Cuda<N>.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../nn/linear.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/embedding.hpp"
#include "../ops/norm.hpp"
#include "../ops/rope.hpp"
#include "../ops/shape.hpp"

namespace tessera::models::qwen2_5_vl {

// vision_config of config.json (transformers 4.5x and v5 write the same keys;
// v5 adds "rope_parameters"). Unknown keys are ignored, as transformers does.
struct VisionConfig {
  std::int64_t depth = 0, hidden_size = 0, intermediate_size = 0, num_heads = 0, out_hidden_size = 0,
               in_channels = 3, patch_size = 14, temporal_patch_size = 2, spatial_merge_size = 2, window_size = 112;
  std::vector<std::int64_t> fullatt_block_indexes;
  // Used by the language model's M-RoPE for videos. Published checkpoints
  // set 2; from_json takes transformers' class default, 4, when the key is absent.
  double tokens_per_second = 2;
  std::string hidden_act = "silu";
  // transformers hardcodes eps=1e-6 for norm1, norm2 and merger.ln_q and
  // reads no key for it, so neither does from_json.
  double rms_norm_eps = 1e-6;
  // rope_parameters.rope_theta (v5), else rope_theta, else 10000.
  double rope_theta = 10000.0;

  std::int64_t head_dim() const { return hidden_size / num_heads; }
  // Patches per merged token (spatial_merge_size^2).
  std::int64_t merge_unit() const { return spatial_merge_size * spatial_merge_size; }
  // Columns of a pixel_values row: in_channels * temporal_patch_size * patch_size^2.
  std::int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
  // Merged tokens per window side: window_size / spatial_merge_size / patch_size.
  std::int64_t merged_window() const { return window_size / spatial_merge_size / patch_size; }

  // Parses the "vision_config" object; `file` names the file in messages.
  // Missing required keys (depth, hidden_size, intermediate_size, num_heads,
  // out_hidden_size), bad values or relations the tower needs are a
  // FormatError naming the file and the key "vision_config.<key>".
  static VisionConfig from_json(const nlohmann::json& vision_config, const std::string& file);
  // Reads the "vision_config" object of `path`: config.json or a checkpoint
  // directory holding one.
  static VisionConfig load(const std::filesystem::path& path);
};

// One image_grid_thw / video_grid_thw row: (t, h, w) in patches.
using GridTHW = std::array<std::int64_t, 3>;

// get_window_index over all items: window_index lists merged-token ids (over
// all items) in window-major order; cu_window_seqlens are the cumulative
// patch counts of the non-empty windows, starting at 0.
struct WindowIndex {
  std::vector<std::int64_t> window_index;
  std::vector<std::int32_t> cu_window_seqlens;
};

// The rotary position (row, column) of every patch in the processor's row
// order: per item, per frame, (h_block, w_block, h_in, w_in). [N] each.
struct PositionIds {
  std::vector<std::int64_t> rows, cols;
};

namespace vision_detail {

inline constexpr std::string_view kTower = "Qwen2.5-VL vision tower";
// Bounds far above any published model that keep products of sizes (weight
// shapes, patch_dim) from overflowing on a corrupt config.
inline constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
inline constexpr std::int64_t kMaxPatchSide = std::int64_t{1} << 10;

// Checks the grids against spatial_merge_size (0: only positivity) and
// returns the number of patches they hold. ValueError naming the item.
inline std::int64_t check_grids(std::span<const GridTHW> grids, std::int64_t merge, std::string_view where) {
  using tessera::detail::concat;
  if (grids.empty()) throw ValueError(concat(where, ": no grids (one (t, h, w) row per image or video is needed)"));
  std::int64_t total = 0;
  for (std::size_t i = 0; i < grids.size(); ++i) {
    const auto [t, h, w] = grids[i];
    const std::string item = concat(where, ": grid ", i, " (t, h, w) = (", t, ", ", h, ", ", w, ")");
    if (t <= 0 || h <= 0 || w <= 0) throw ValueError(concat(item, " must be positive"));
    if (merge > 0 && (h % merge != 0 || w % merge != 0)) {
      throw ValueError(concat(item, ": h and w must be multiples of spatial_merge_size ", merge,
                              " (the processor resizes images to multiples of patch_size * merge_size)"));
    }
    // int32 cu_seqlens, as transformers builds them, bound the total.
    const std::int64_t limit = std::numeric_limits<std::int32_t>::max();
    if (h > limit || w > limit || t > limit / (h * w) || total > limit - t * h * w) {
      throw ValueError(concat(item, ": the grids hold more than ", limit,
                              " patches, beyond the int32 cumulative sequence lengths"));
    }
    total += t * h * w;
  }
  return total;
}

// Throws unless the relations the tower relies on hold. `fail(key, message)`
// must throw: FormatError from from_json, ValueError from VisionTower::load
// (a config built by hand).
template <class Fail>
void check_config(const VisionConfig& c, Fail&& fail) {
  using tessera::detail::concat;
  const auto positive = [&](std::string_view key, std::int64_t v, std::int64_t max) {
    if (v <= 0) fail(key, concat("must be a positive integer, but it is ", v));
    if (v > max) fail(key, concat("is ", v, ", above tessera's limit of ", max, " (a corrupt config?)"));
  };
  positive("depth", c.depth, io::kMaxConfigLayers);
  positive("hidden_size", c.hidden_size, kMaxWidth);
  positive("intermediate_size", c.intermediate_size, kMaxWidth);
  positive("num_heads", c.num_heads, kMaxWidth);
  positive("out_hidden_size", c.out_hidden_size, kMaxWidth);
  positive("in_channels", c.in_channels, kMaxPatchSide);
  positive("patch_size", c.patch_size, kMaxPatchSide);
  positive("temporal_patch_size", c.temporal_patch_size, kMaxPatchSide);
  positive("spatial_merge_size", c.spatial_merge_size, kMaxPatchSide);
  positive("window_size", c.window_size, kMaxWidth);
  if (c.hidden_size % c.num_heads != 0) {
    fail("num_heads", concat(c.num_heads, " does not divide hidden_size ", c.hidden_size,
                             " (head_dim = hidden_size / num_heads)"));
  }
  if (c.head_dim() % 4 != 0) {
    fail("num_heads", concat("gives head_dim ", c.head_dim(), " = hidden_size ", c.hidden_size, " / num_heads ",
                             c.num_heads, ", which is not a multiple of 4 (the 2-D rotary embedding gives each of "
                             "rows and columns head_dim / 4 frequencies)"));
  }
  const std::int64_t block = c.patch_size * c.spatial_merge_size;
  if (c.window_size % block != 0) {
    fail("window_size", concat(c.window_size, " is not a multiple of patch_size * spatial_merge_size = ", block,
                               " (a window must hold whole merged tokens)"));
  }
  for (const std::int64_t index : c.fullatt_block_indexes) {
    if (index < 0 || index >= c.depth) {
      fail("fullatt_block_indexes", concat("holds ", index, ", outside the blocks 0..", c.depth - 1, " (depth ",
                                           c.depth, ")"));
    }
  }
  if (c.hidden_act != "silu") {
    fail("hidden_act", concat("is \"", c.hidden_act, "\"; the Qwen2.5-VL vision MLP supports \"silu\""));
  }
  if (!(c.rms_norm_eps > 0.0) || !std::isfinite(c.rms_norm_eps)) {
    fail("rms_norm_eps", concat("must be a positive number, but it is ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0.0) || !std::isfinite(c.rope_theta)) {
    fail("rope_parameters", concat("rope_theta must be a positive number, but it is ", c.rope_theta));
  }
}

using VisionFields = io::detail::JsonFields;

// A required size; `alias` is transformers' attribute_map spelling.
inline std::int64_t required(const VisionFields& f, std::string_view key, std::string_view alias) {
  if (!f.has_value(key) && f.has_value(alias)) return f.integer(alias, 0);
  return f.required_integer(key, "the vision tower needs it");
}

// rope_parameters (v5: {"rope_type": "axial", "rope_theta": 10000.0}) or a
// plain rope_theta; the vision rotary embedding supports only axial RoPE
// ("default" is read as axial, as transformers does).
inline double read_rope_theta(const VisionFields& f) {
  double theta = f.number("rope_theta", 10000.0);
  if (!f.has_value("rope_parameters")) return theta;
  const auto& rope = f.raw("rope_parameters");
  if (!rope.is_object()) throw f.bad("rope_parameters", "must be a JSON object");
  for (const char* key : {"rope_type", "type"}) {
    const auto it = rope.find(key);
    if (it == rope.end() || it->is_null()) continue;
    if (!it->is_string() || (*it != "axial" && *it != "default")) {
      throw f.error("rope_parameters",
                    tessera::detail::concat("has ", key, " ", io::detail::json_excerpt(*it),
                                            "; the vision rotary embedding supports only \"axial\""));
    }
    break;
  }
  const auto it = rope.find("rope_theta");
  if (it != rope.end() && !it->is_null()) {
    if (!it->is_number()) throw f.error("rope_parameters", "has a rope_theta that is not a number");
    theta = it->get<double>();
  }
  return theta;
}

// window_index of one item's merged tokens (ids offset by `first`), and
// the cumulative patch counts of its windows appended to `cu`.
inline void item_windows(const GridTHW& grid, const VisionConfig& cfg, std::int64_t first, WindowIndex& out) {
  const auto [t, h, w] = grid;
  const std::int64_t lh = h / cfg.spatial_merge_size, lw = w / cfg.spatial_merge_size, n = cfg.merged_window();
  // transformers pads by n - len % n: a whole empty row/column of windows
  // when len is a multiple of n; those windows are empty and skipped below.
  const std::int64_t windows_h = (lh + n - lh % n) / n, windows_w = (lw + n - lw % n) / n;
  for (std::int64_t f = 0; f < t; ++f) {
    for (std::int64_t wy = 0; wy < windows_h; ++wy) {
      for (std::int64_t wx = 0; wx < windows_w; ++wx) {
        std::int64_t count = 0;
        for (std::int64_t y = wy * n; y < std::min(wy * n + n, lh); ++y) {
          for (std::int64_t x = wx * n; x < std::min(wx * n + n, lw); ++x, ++count) {
            out.window_index.push_back(first + (f * lh + y) * lw + x);
          }
        }
        // An empty window repeats the previous offset, which transformers'
        // unique_consecutive removes.
        if (count > 0) {
          out.cu_window_seqlens.push_back(
              static_cast<std::int32_t>(out.cu_window_seqlens.back() + count * cfg.merge_unit()));
        }
      }
    }
  }
}

// Everything the forward pass derives from the grids, on the host.
struct HostPlan {
  Tensor<Host, std::int64_t> window_index, reverse_index;  // [N / merge^2]
  Tensor<Host, std::int32_t> cu_window, cu_frames;
  Tensor<Host, std::int64_t> rows, cols;  // [N], in window order
};

template <class T>
Tensor<Host, T> host_tensor(const std::vector<T>& values) {
  return Tensor<Host, T>::from(std::span<const T>(values), Shape{static_cast<std::int64_t>(values.size())});
}

}  // namespace vision_detail

// get_window_index of transformers (vision_utils.get_vision_window_index)
// over all items, which are numbered on from one another.
inline WindowIndex get_window_index(std::span<const GridTHW> grids, const VisionConfig& cfg) {
  vision_detail::check_grids(grids, cfg.spatial_merge_size, "get_window_index");
  if (cfg.merged_window() <= 0) {
    throw ValueError(tessera::detail::concat("get_window_index: window_size ", cfg.window_size,
                                             " holds no merged token (patch_size ", cfg.patch_size,
                                             ", spatial_merge_size ", cfg.spatial_merge_size, ")"));
  }
  WindowIndex out;
  out.cu_window_seqlens.push_back(0);
  std::int64_t first = 0;
  for (const GridTHW& grid : grids) {
    vision_detail::item_windows(grid, cfg, first, out);
    first += grid[0] * (grid[1] / cfg.spatial_merge_size) * (grid[2] / cfg.spatial_merge_size);
  }
  return out;
}

// cu_seqlens of the full-attention blocks: one segment of h*w patches per
// frame of every item (transformers' repeat_interleave(h*w, t).cumsum).
inline std::vector<std::int32_t> frame_cu_seqlens(std::span<const GridTHW> grids) {
  vision_detail::check_grids(grids, 0, "frame_cu_seqlens");
  std::vector<std::int32_t> cu{0};
  for (const auto& [t, h, w] : grids) {
    for (std::int64_t f = 0; f < t; ++f) cu.push_back(static_cast<std::int32_t>(cu.back() + h * w));
  }
  return cu;
}

// Rotary (row, column) of every patch in the processor's row order
// (transformers' get_vision_position_ids), repeated over each item's frames.
inline PositionIds vision_position_ids(std::span<const GridTHW> grids, std::int64_t spatial_merge_size) {
  const std::int64_t m = spatial_merge_size;
  if (m <= 0) {
    throw ValueError(tessera::detail::concat("vision_position_ids: spatial_merge_size must be positive, got ", m));
  }
  vision_detail::check_grids(grids, m, "vision_position_ids");
  PositionIds out;
  for (const auto& [t, h, w] : grids) {
    for (std::int64_t f = 0; f < t; ++f) {
      for (std::int64_t by = 0; by < h / m; ++by) {
        for (std::int64_t bx = 0; bx < w / m; ++bx) {
          for (std::int64_t iy = 0; iy < m; ++iy) {
            for (std::int64_t ix = 0; ix < m; ++ix) {
              out.rows.push_back(by * m + iy);
              out.cols.push_back(bx * m + ix);
            }
          }
        }
      }
    }
  }
  return out;
}

inline VisionConfig VisionConfig::from_json(const nlohmann::json& vision_config, const std::string& file) {
  const vision_detail::VisionFields f(vision_config, file, "vision_config.");
  VisionConfig c;
  c.depth = vision_detail::required(f, "depth", "num_hidden_layers");
  c.hidden_size = vision_detail::required(f, "hidden_size", "hidden_size");
  c.intermediate_size = vision_detail::required(f, "intermediate_size", "intermediate_size");
  c.num_heads = vision_detail::required(f, "num_heads", "num_attention_heads");
  c.out_hidden_size = vision_detail::required(f, "out_hidden_size", "out_hidden_size");
  // Published configs also carry "in_chans" and "spatial_patch_size", which
  // transformers ignores; so does tessera.
  c.in_channels = f.integer("in_channels", c.in_channels);
  c.patch_size = f.integer("patch_size", c.patch_size);
  c.temporal_patch_size = f.integer("temporal_patch_size", c.temporal_patch_size);
  c.spatial_merge_size = f.integer("spatial_merge_size", c.spatial_merge_size);
  c.window_size = f.integer("window_size", c.window_size);
  if (f.has_value("fullatt_block_indexes")) {
    const auto& list = f.raw("fullatt_block_indexes");
    if (!list.is_array()) throw f.bad("fullatt_block_indexes", "must be a list of block indexes");
    for (const auto& e : list) {
      if (!e.is_number_integer()) throw f.bad("fullatt_block_indexes", "must hold only integers");
      c.fullatt_block_indexes.push_back(e.get<std::int64_t>());
    }
  } else {
    c.fullatt_block_indexes = {7, 15, 23, 31};  // transformers' default
  }
  c.tokens_per_second = f.number("tokens_per_second", 4.0);  // transformers' class default
  if (!(c.tokens_per_second > 0.0) || !std::isfinite(c.tokens_per_second)) {
    throw f.error("tokens_per_second", tessera::detail::concat("must be a positive number, but it is ",
                                                               c.tokens_per_second));
  }
  c.hidden_act = f.string("hidden_act", c.hidden_act);
  c.rope_theta = vision_detail::read_rope_theta(f);
  vision_detail::check_config(c, [&](std::string_view key, const std::string& message) {
    throw f.error(key, message);
  });
  return c;
}

inline VisionConfig VisionConfig::load(const std::filesystem::path& path) {
  const auto file = io::detail::json_file_in(path, "config.json");
  const std::string where = file.string();
  const nlohmann::json root = io::detail::parse_json_text(io::detail::read_text_file(file, "config file"), where);
  if (!root.is_object() || !root.contains("vision_config")) {
    throw FormatError(tessera::detail::concat("'", where, "': no \"vision_config\" object (not a Qwen2.5-VL config?)"));
  }
  return from_json(root.at("vision_config"), where);
}

template <Device D, FloatType T>
class VisionTower {
 public:
  using device_type = D;

  // Loads the tower's weights from `checkpoint` under `prefix`: "visual."
  // (the published layout) or "model.visual." (transformers >= 4.52). Every
  // tensor's shape is checked against `cfg` before it is read (FormatError
  // naming the tensor, the checkpoint and both shapes); a missing tensor is
  // the checkpoint's ValueError naming it.
  static VisionTower load(const io::Checkpoint& checkpoint, const std::string& prefix, const VisionConfig& cfg) {
    vision_detail::check_config(cfg, [&](std::string_view key, const std::string& message) {
      throw ValueError(tessera::detail::concat(vision_detail::kTower, ": config field ", key, " ", message));
    });
    const std::int64_t hidden = cfg.hidden_size, inter = cfg.intermediate_size;
    const std::int64_t merged = hidden * cfg.merge_unit();
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return load_checked(checkpoint, prefix + name, shape);
    };
    const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in) {
      return nn::Linear<D, T>(weight(name + ".weight", Shape{out, in}), weight(name + ".bias", Shape{out}));
    };
    const std::int64_t tp = cfg.temporal_patch_size, p = cfg.patch_size;
    Tensor<D, T> patch = weight("patch_embed.proj.weight", Shape{hidden, cfg.in_channels, tp, p, p});
    // Conv3d with stride = kernel on rows laid out (c, t, py, px): the
    // weight's own layout, read as a 2-D [hidden, C*tp*p*p] linear weight.
    patch.reshape_inplace(Shape{hidden, cfg.patch_dim()});
    std::vector<Block> blocks;
    for (std::int64_t i = 0; i < cfg.depth; ++i) {
      const std::string b = tessera::detail::concat("blocks.", i, ".");
      blocks.push_back(Block{
          weight(b + "norm1.weight", Shape{hidden}),
          weight(b + "norm2.weight", Shape{hidden}),
          linear(b + "attn.qkv", 3 * hidden, hidden),
          linear(b + "attn.proj", hidden, hidden),
          linear(b + "mlp.gate_proj", inter, hidden),
          linear(b + "mlp.up_proj", inter, hidden),
          linear(b + "mlp.down_proj", hidden, inter),
          std::find(cfg.fullatt_block_indexes.begin(), cfg.fullatt_block_indexes.end(), i) !=
              cfg.fullatt_block_indexes.end(),
      });
    }
    Merger merger{weight("merger.ln_q.weight", Shape{hidden}), linear("merger.mlp.0", merged, merged),
                  linear("merger.mlp.2", cfg.out_hidden_size, merged)};
    return VisionTower(cfg, std::move(patch), std::move(blocks), std::move(merger));
  }

  const VisionConfig& config() const noexcept { return config_; }

  // pixel_values: [N, in_channels*temporal_patch_size*patch_size^2] on D,
  // rows in the processor's order (items one after another); grids: one
  // (t, h, w) per image or video item. Returns [N / merge^2, out_hidden_size]
  // in raster order per item: the rows that replace the <|image_pad|> /
  // <|video_pad|> embeddings. Mismatched shapes are a ShapeError, bad grids
  // a ValueError, each naming the values.
  Tensor<D, T> forward(const Tensor<D, T>& pixel_values, std::span<const GridTHW> grids) const {
    check_inputs(pixel_values, grids);
    const vision_detail::HostPlan plan = plan_for(grids);
    const Tensor<D, std::int32_t> cu_window = to<D>(plan.cu_window);
    const Tensor<D, std::int32_t> cu_frames = to<D>(plan.cu_frames);
    const ops::RopeTables<D> rope = rotary_tables(to<D>(plan.rows), to<D>(plan.cols));
    const double eps = config_.rms_norm_eps;

    Tensor<D, T> residual = gather_merge_units(ops::linear(pixel_values, patch_), to<D>(plan.window_index));
    Tensor<D, T> h = ops::rms_norm(residual, blocks_[0].norm1, eps);
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const Block& block = blocks_[l];
      const Tensor<D, T> attn = attention(block, h, rope, block.full_attention ? cu_frames : cu_window);
      h = ops::add_rms_norm(attn, residual, block.norm2, eps);
      const Tensor<D, T> mlp = block.down.forward(ops::swiglu(block.gate.forward(h), block.up.forward(h)));
      // The last block's residual add is fused with the merger's ln_q.
      const Tensor<D, T>& next_norm = l + 1 < blocks_.size() ? blocks_[l + 1].norm1 : merger_.ln_q;
      h = ops::add_rms_norm(mlp, residual, next_norm, eps);
    }
    // Each merge block's merge^2 rows are adjacent (in window order too):
    // their concatenation is one row of the merger's input.
    h.reshape_inplace(Shape{h.dim(0) / config_.merge_unit(), h.dim(1) * config_.merge_unit()});
    const Tensor<D, T> merged = merger_.fc2.forward(ops::gelu(merger_.fc1.forward(h)));
    return ops::embedding(merged, to<D>(plan.reverse_index));
  }

 private:
  struct Block {
    Tensor<D, T> norm1, norm2;
    nn::Linear<D, T> qkv, proj, gate, up, down;
    bool full_attention;  // per-frame segments instead of windows
  };
  struct Merger {
    Tensor<D, T> ln_q;
    nn::Linear<D, T> fc1, fc2;  // merger.mlp.0, merger.mlp.2
  };

  VisionTower(VisionConfig cfg, Tensor<D, T> patch, std::vector<Block> blocks, Merger merger)
      : config_(std::move(cfg)), patch_(std::move(patch)), blocks_(std::move(blocks)), merger_(std::move(merger)) {}

  static Tensor<D, T> load_checked(const io::Checkpoint& checkpoint, const std::string& name, const Shape& expected) {
    const Shape actual = checkpoint.info(name).shape;
    if (!(actual == expected)) {
      throw FormatError(tessera::detail::concat(vision_detail::kTower, ": checkpoint '",
                                                checkpoint.directory().string(), "': tensor '", name, "' has shape ",
                                                actual.to_string(), " but vision_config expects ",
                                                expected.to_string()));
    }
    return checkpoint.load<D, T>(name);
  }

  void check_inputs(const Tensor<D, T>& pixel_values, std::span<const GridTHW> grids) const {
    using tessera::detail::concat;
    const std::string where = concat(vision_detail::kTower, "::forward");
    if (pixel_values.rank() != 2 || pixel_values.dim(1) != config_.patch_dim()) {
      throw ShapeError(concat(where, ": pixel_values ", pixel_values.shape().to_string(), " must be [patches, ",
                              config_.patch_dim(), "] (in_channels ", config_.in_channels, " * temporal_patch_size ",
                              config_.temporal_patch_size, " * patch_size^2 ", config_.patch_size * config_.patch_size,
                              " columns)"));
    }
    const std::int64_t patches = vision_detail::check_grids(grids, config_.spatial_merge_size, where);
    if (pixel_values.dim(0) != patches) {
      throw ShapeError(concat(where, ": pixel_values ", pixel_values.shape().to_string(), " has ",
                              pixel_values.dim(0), " rows but the ", grids.size(),
                              " grids hold sum(t*h*w) = ", patches, " patches"));
    }
  }

  // Window order, segment offsets and window-ordered rotary positions.
  vision_detail::HostPlan plan_for(std::span<const GridTHW> grids) const {
    using vision_detail::host_tensor;
    const WindowIndex windows = get_window_index(grids, config_);
    const PositionIds positions = vision_position_ids(grids, config_.spatial_merge_size);
    const std::int64_t unit = config_.merge_unit();
    const auto& order = windows.window_index;
    std::vector<std::int64_t> reverse(order.size()), rows(positions.rows.size()), cols(positions.cols.size());
    for (std::size_t j = 0; j < order.size(); ++j) {
      reverse[static_cast<std::size_t>(order[j])] = static_cast<std::int64_t>(j);  // argsort of a permutation
    }
    // Patch j in window order is patch order[j / unit] * unit + j % unit.
    for (std::size_t j = 0; j < rows.size(); ++j) {
      const auto src = static_cast<std::size_t>(order[j / static_cast<std::size_t>(unit)] * unit +
                                                static_cast<std::int64_t>(j) % unit);
      rows[j] = positions.rows[src];
      cols[j] = positions.cols[src];
    }
    return {host_tensor(order),      host_tensor(reverse),
            host_tensor(windows.cu_window_seqlens), host_tensor(frame_cu_seqlens(grids)),
            host_tensor(rows),       host_tensor(cols)};
  }

  // [N, hidden] with its groups of merge^2 rows reordered by `index`.
  Tensor<D, T> gather_merge_units(const Tensor<D, T>& x, const Tensor<D, std::int64_t>& index) const {
    const std::int64_t unit = config_.merge_unit(), rows = x.dim(0), width = x.dim(1);
    Tensor<D, T> out = ops::embedding(x.view().reshape({rows / unit, unit * width}), index);
    out.reshape_inplace(Shape{rows, width});
    return out;
  }

  // cos/sin [N, head_dim]: columns [rows | cols | rows | cols], head_dim/4 each.
  ops::RopeTables<D> rotary_tables(const Tensor<D, std::int64_t>& rows, const Tensor<D, std::int64_t>& cols) const {
    const std::int64_t quarter = config_.head_dim() / 4;
    const std::array<ops::RopeTables<D>, 2> axes{ops::rope_tables(rows, 2 * quarter, config_.rope_theta),
                                                 ops::rope_tables(cols, 2 * quarter, config_.rope_theta)};
    const std::array<ops::RopeSection, 2> sections{{{0, 0, quarter}, {1, 0, quarter}}};
    return ops::compose_rope_tables<D>(axes, sections);
  }

  // Self-attention of one block within the segments `cu_seqlens`.
  Tensor<D, T> attention(const Block& block, const Tensor<D, T>& h, const ops::RopeTables<D>& rope,
                         const Tensor<D, std::int32_t>& cu_seqlens) const {
    const std::int64_t tokens = h.dim(0), heads = config_.num_heads, hd = config_.head_dim();
    const Tensor<D, T> qkv = block.qkv.forward(h);
    // The qkv output is [q | k | v], each head-major.
    const auto parts = qkv.view().reshape({tokens, 3, heads, hd});
    const Tensor<D, T> q = ops::apply_rope(parts.select(1, 0), rope.cos, rope.sin);
    const Tensor<D, T> k = ops::apply_rope(parts.select(1, 1), rope.cos, rope.sin);
    ops::AttentionOptions options;
    options.mask = ops::MaskKind::Full;  // scale: the default head_dim^-0.5
    Tensor<D, T> out = ops::attention(q, k, parts.select(1, 2), cu_seqlens, cu_seqlens, options);
    out.reshape_inplace(Shape{tokens, heads * hd});
    return block.proj.forward(out);
  }

  VisionConfig config_;
  Tensor<D, T> patch_;  // [hidden, in_channels * temporal_patch_size * patch_size^2]
  std::vector<Block> blocks_;
  Merger merger_;
};

}  // namespace tessera::models::qwen2_5_vl

// =============================================================================
// The tower's cost for the planner (placement/model_description.hpp): what
// one pass of VisionTower::forward over N patches allocates, next to the
// code it mirrors, so a change to the tower and to its cost land in one
// diff. tests/unit/test_planner.cpp holds it to the memory ledger.
// =============================================================================

#include "../placement/model_description.hpp"

namespace tessera::models::qwen2_5_vl {

// Merged tokens (feature rows) of N patches.
inline std::uint64_t merged_tokens(const VisionConfig& v, std::uint64_t patches) {
  return patches / static_cast<std::uint64_t>(v.merge_unit());
}

// Patches of an image area of `pixels`, rounded up to whole merged tokens
// (the planner's max_image_pixels -> vision units).
inline std::uint64_t patches_for_pixels(const VisionConfig& v, std::uint64_t pixels) {
  const auto per_patch = static_cast<std::uint64_t>(v.patch_size * v.patch_size);
  const auto unit = static_cast<std::uint64_t>(v.merge_unit());
  const std::uint64_t patches = (pixels + per_patch - 1) / per_patch;
  return (patches + unit - 1) / unit * unit;
}

// Index tensors the tower derives from the grids (window_index,
// reverse_index [M] and rows, cols [N] int64, two int32 cu_seqlens of at
// most M + 1 entries): made on the host, copied to the tower's device.
inline std::uint64_t vision_index_bytes(const VisionConfig& v, std::uint64_t N) {
  const std::uint64_t M = merged_tokens(v, N);
  return 16 * M + 16 * N + 8 * (M + 1);
}

// The tower's own allocations on its device during one pass over N
// patches, with elements of e bytes: the pixels copied there (and cast),
// the index tensors, the rotary tables, then the blocks or the merger with
// what stays alive, plus the float copies of the widest half-precision GEMM.
inline std::uint64_t vision_device_bytes(const VisionConfig& v, std::uint64_t e, std::uint64_t N) {
  using u64 = std::uint64_t;
  if (N == 0) return 0;
  const auto widen = [e](u64 m, u64 k, u64 n) { return placement::gemm_widening_bytes(e, m, k, n); };
  const u64 M = merged_tokens(v, N);
  const u64 Hv = static_cast<u64>(v.hidden_size), Iv = static_cast<u64>(v.intermediate_size);
  const u64 hv = static_cast<u64>(v.head_dim()), pd = static_cast<u64>(v.patch_dim());
  const u64 Ho = static_cast<u64>(v.out_hidden_size), uH = static_cast<u64>(v.merge_unit()) * Hv;
  const u64 pixels = 4 * N * pd + (e != 4 ? N * pd * e : 0);
  const u64 NH = N * Hv * e;
  // residual and h, then the larger of attention (qkv, rotated q and k,
  // output, projection: 7NHv e, with float q/k/v copies when e != 4) and the
  // MLP (gate, up, swiglu, down) while the block's attention output is
  // still alive.
  const u64 blocks = 2 * NH + std::max(7 * NH + (e != 4 ? 12 * N * Hv : 0), NH + 3 * N * Iv * e + NH);
  // residual and h stay alive through the merger: fc1, gelu, fc2, then the
  // reverse gather.
  const u64 merger = 2 * NH + std::max(2 * M * uH * e + M * Ho * e, 2 * M * Ho * e);
  const u64 widest = std::max({widen(N, pd, Hv), widen(N, Hv, 3 * Hv), widen(N, Hv, Iv), widen(N, Iv, Hv),
                               widen(M, uH, uH), widen(M, uH, Ho)});
  // Rotary tables [N, hv] cos and sin (float) stay; the two axes' tables
  // they are composed from are transient.
  return pixels + vision_index_bytes(v, N) + 8 * N * hv + std::max({8 * N * hv, blocks, merger}) + widest;
}

// One pass over N patches (every image and video of a prompt): on the host
// the concatenated float pixels and the index tensors; on the tower's device
// vision_device_bytes; the features [M, out_hidden_size] stay there.
inline placement::VisionCost vision_cost(const VisionConfig& v, std::uint64_t patches, std::size_t element_size) {
  const auto e = static_cast<std::uint64_t>(element_size);
  placement::VisionCost cost;
  cost.host_transient = 4 * patches * static_cast<std::uint64_t>(v.patch_dim()) + vision_index_bytes(v, patches);
  cost.device_transient = vision_device_bytes(v, e, patches);
  cost.features = merged_tokens(v, patches) * static_cast<std::uint64_t>(v.out_hidden_size) * e;
  return cost;
}

}  // namespace tessera::models::qwen2_5_vl
