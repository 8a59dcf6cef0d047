// tessera/models/internvl2_vision.hpp — the InternVL2 vision encoder: InternViT
// (vision_model.*, both published variants: InternViT-300M-448px and
// InternViT-6B-448px-V1-5) and the projector (mlp1.*), as the original remote
// code computes them (OpenGVLab/InternVL modeling_intern_vit.py and
// InternVLChatModel.extract_feature; transformers 5.23's native
// InternVLModel computes the same). Per tile b of S x S pixels, patch p,
// runtime grid G' = S / p, N = G'^2 patches, L = 1 + N rows:
//
//   InternViT (vision_model.):
//   x = [cls | pixels W_patch^T + b_patch]       (Conv2d with stride = kernel, with
//                                                  bias; the class token first)  [L, C]
//   x = x + pos                                   pos = [pos_cls | bicubic(pos_grid)]:
//                                                  the table's G x G patch grid
//                                                  (G = image_size / p) resized to
//                                                  G' x G' in float32, then cast to T
//   for each layer l < layers_used:
//     h = norm1(x)                                LayerNorm (with bias) or RMSNorm by
//                                                  norm_type, eps layer_norm_eps
//     q | k | v = h Wqkv^T (+ bqkv iff qkv_bias)  each [L, C], head-major
//     q, k = RMSNorm_q(q), RMSNorm_k(k)           iff qk_normalization: over the FULL
//                                                  width C (all heads at once)
//     a = softmax(q k^T / sqrt(C / heads)) v      per head, within the tile, no mask
//     x = x + ls1 * (a Wproj^T + bproj)
//     x = x + ls2 * fc2(gelu(fc1(norm2(x))))      exact (erf) GELU, both biased
//   (no final norm)
//
//   Projector, k = 1 / downsample_ratio (2), G'' = G' / k:
//   v = x[1:] as a G' x G' grid (row-major)      CLS dropped
//   y(i, j) = concat_{a<k, c<k} v(k i + a, k j + c)   ps_version v2, a-major: for k = 2
//                                                  [v(2i,2j) | v(2i,2j+1) | v(2i+1,2j) | v(2i+1,2j+1)]
//                                                  tokens (i, j) in raster order;
//                                                  v1 writes token (j, i) there instead
//   out = fc2(gelu(fc1(LayerNorm(y))))            mlp1.0 (eps 1e-5, nn.LayerNorm's
//                                                  default), mlp1.1, nn.GELU, mlp1.3
//                                                                [tiles * G''^2, llm_hidden]
//
// The feature layer. extract_feature takes last_hidden_state for
// select_layer -1 and hidden_states[select_layer] otherwise, where
// hidden_states[0] is the embedding output and hidden_states[i] the output
// of layer i; so -k is the output of layer L_vit + 1 - k and the layers
// after it are never run. layers_used() counts the layers it needs, and
// load() reads only those (the rest of the checkpoint's layers are ignored).
//
// Pixel shuffle. The reference runs, on v [B, G', G', C] (named n, w, h, c
// in its code): view(B, G', G'/k, kC) -> permute(0,2,1,3) -> view(B, G'/k,
// G'/k, k^2 C) -> permute(0,2,1,3) (v2 only). Following the indices: the
// first view joins columns (k j .. k j + k-1) of a row, the permute makes the
// column block the leading axis, the second view joins rows (k i .. k i +
// k-1) of that column block, so element [j, i] is concat_a concat_c v(k i +
// a, k j + c); v2's last permute puts it at [i, j]. tessera gathers these
// rows straight out of the tower's output (shuffle_source_rows, one int64 id
// per patch row), which drops the CLS rows in the same pass; the unit test
// checks the closed form against a literal replay of the view/permute
// sequence. The reference's num_image_token is int(G'^2 * ratio^2), the same
// count when k divides G', which load() requires.
//
// Position embedding. InternVisionEmbeddings._get_pos_embed resizes the
// stored [1, G^2, C] patch table with F.interpolate(mode='bicubic',
// align_corners=False) in float32 at every forward, from G = image_size /
// patch_size of vision_config to the input's grid; tiles are always
// force_image_size, so tessera resizes once at load (an identity when G' = G,
// as torch's bicubic gives weights exactly (0, 1, 0, 0) at t = 0). torch's
// CPU kernel (UpSampleKernel.cpp, HelperInterpCubic) per output index i:
//   scale = float(in) / float(out);  src = scale * (i + 0.5) - 0.5   (float)
//   i0 = min(floor(src), in - 1);     t = clamp(src - i0, 0, 1)
//   taps i0-1 .. i0+2, each clamped to [0, in-1], weights
//   [cc2(t+1), cc1(t), cc1(1-t), cc2(2-t)] with A = -0.75,
//   cc1(x) = ((A+2) x - (A+3)) x^2 + 1,  cc2(x) = ((A x - 5A) x + 8A) x - 4A
// applied along rows and columns. tessera takes the weights in float as
// above and sums the 16 taps in double, rounded once to float. torch 2.15's
// float weights are a few float ulps away from these (its x = 0 and x = 6
// weights of a 4 -> 7 resize are not mirror images, as exact ones would be):
// on tables of values in [-1, 1] the two resized tables differ by at most
// 1.8e-6 (4 -> 7, 32 -> 40; 1.2e-7 for 6 -> 4, 3 -> 4, 32 -> 16, 16 -> 32),
// far below the float32 golden tolerance, and not at all in the identity
// case of every published checkpoint. The CLS position is not resized.
//
// Precision and rounding. ls1 * attn and the residual sum are two roundings
// to T, as in the reference (`x + attn(..) * ls1`). The attention softmax is
// in float (the reference's eager path runs it in T; in float32 the two
// agree to rounding). The q/k RMSNorm uses layer_norm_eps, as
// modeling_intern_vit.py builds InternRMSNorm(embed_dim,
// eps=config.layer_norm_eps); transformers' native class hard-codes 1e-6,
// which is the published configs' layer_norm_eps too, so both readings give
// the same result on every published checkpoint.
//
// Index tensors (cu_seqlens, the shuffle's row ids) are built on the host and
// moved to D with to<D>; everything else is ops on D, so the same code runs
// on Cpu<N> and Cuda<N>.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../nn/linear.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/embedding.hpp"
#include "../ops/norm.hpp"
#include "../ops/patch_embed.hpp"
#include "../ops/shape.hpp"

namespace tessera::models::internvl2 {

// vision_config.norm_type: nn.LayerNorm (with bias; InternViT-300M) or
// InternRMSNorm (InternViT-6B).
enum class NormType { layer_norm, rms_norm };

// "vision_config" of an InternVL2 config.json (InternVisionConfig). Unknown
// keys are ignored, as transformers does.
struct VisionConfig {
  std::int64_t hidden_size = 0, num_attention_heads = 0, intermediate_size = 0, num_hidden_layers = 0,
               image_size = 224, patch_size = 14, num_channels = 3;
  NormType norm_type = NormType::rms_norm;
  bool qkv_bias = false;
  bool qk_normalization = true;
  double layer_norm_eps = 1e-6;
  std::string hidden_act = "gelu";

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Side of the position table's patch grid: image_size // patch_size.
  std::int64_t table_grid() const { return image_size / patch_size; }

  // Parses the "vision_config" object; `file` names the file in messages.
  // hidden_size, num_attention_heads, intermediate_size and
  // num_hidden_layers are required (every published config sets every key
  // read here); the rest default to InternVisionConfig's class defaults
  // (image_size 224, patch_size 14, norm_type "rms_norm", qkv_bias false,
  // qk_normalization true, layer_norm_eps 1e-6, hidden_act "gelu"). A
  // missing or bad value, a norm_type other than "layer_norm" / "rms_norm"
  // or a hidden_act other than "gelu" is a FormatError naming the file and
  // "vision_config.<key>".
  static VisionConfig from_json(const nlohmann::json& vision_config, const std::string& file);
};

// The top-level keys of config.json the projector and the tile size come from.
struct ProjectorConfig {
  std::int64_t select_layer = -1;
  double downsample_ratio = 0.5;
  std::string ps_version = "v2";
  std::int64_t image_size = 448;  // force_image_size: the tile size the tower runs at
  std::int64_t llm_hidden = 0;    // llm_config.hidden_size

  // Reads select_layer, downsample_ratio, ps_version, force_image_size and
  // llm_config.hidden_size from the root object of config.json, with
  // InternVLChatConfig's class defaults where a key is absent (select_layer
  // -1, downsample_ratio 0.5, ps_version "v1"; force_image_size null or
  // absent: vision_config.image_size, as the chat model's `image_size =
  // config.force_image_size or config.vision_config.image_size`). Bad
  // values (see load()'s checks) are a FormatError naming the file and key.
  static ProjectorConfig from_json(const nlohmann::json& root, const VisionConfig& vision, const std::string& file);
};

namespace vision_detail {

inline constexpr std::string_view kTower = "InternViT (vision_model)";
inline constexpr std::string_view kProjector = "InternVL2 projector (mlp1)";
// Bounds far above any published model that keep products of sizes from
// overflowing on a corrupt config.
inline constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
inline constexpr std::int64_t kMaxSide = std::int64_t{1} << 14;
// nn.LayerNorm's default eps: mlp1.0 is built without one.
inline constexpr double kProjectorNormEps = 1e-5;

// Throws unless the tower's relations hold; `fail(key, message)` must throw
// (FormatError from from_json, ValueError from a hand-built config).
template <class Fail>
void check_vision_config(const VisionConfig& c, Fail&& fail) {
  using tessera::detail::concat;
  const auto positive = [&](std::string_view key, std::int64_t v, std::int64_t max) {
    if (v <= 0) fail(key, concat("must be a positive integer, but it is ", v));
    if (v > max) fail(key, concat("is ", v, ", above tessera's limit of ", max, " (a corrupt config?)"));
  };
  positive("hidden_size", c.hidden_size, kMaxWidth);
  positive("num_attention_heads", c.num_attention_heads, kMaxWidth);
  positive("intermediate_size", c.intermediate_size, kMaxWidth);
  positive("num_hidden_layers", c.num_hidden_layers, io::kMaxConfigLayers);
  positive("image_size", c.image_size, kMaxSide);
  positive("patch_size", c.patch_size, kMaxSide);
  positive("num_channels", c.num_channels, 64);
  if (c.hidden_size % c.num_attention_heads != 0) {
    fail("num_attention_heads", concat(c.num_attention_heads, " does not divide hidden_size ", c.hidden_size,
                                       " (head_dim = hidden_size / num_attention_heads)"));
  }
  if (c.image_size < c.patch_size) {
    fail("image_size", concat(c.image_size, " is smaller than patch_size ", c.patch_size,
                              " (the position table has 1 + (image_size // patch_size)^2 rows)"));
  }
  if (c.hidden_act != "gelu") {
    fail("hidden_act", concat("is \"", c.hidden_act, "\"; the InternViT MLP supports \"gelu\" (exact erf GELU)"));
  }
  if (!(c.layer_norm_eps > 0.0) || !std::isfinite(c.layer_norm_eps)) {
    fail("layer_norm_eps", concat("must be a positive number, but it is ", c.layer_norm_eps));
  }
}

// The shuffle factor k = 1 / downsample_ratio, or 0 when the ratio is not
// the inverse of a positive integer.
inline std::int64_t shuffle_factor(double ratio) {
  if (!(ratio > 0.0) || !(ratio <= 1.0)) return 0;
  const double inverse = 1.0 / ratio;
  const double k = std::round(inverse);
  if (std::abs(inverse - k) > 1e-9 * k || k > static_cast<double>(kMaxSide)) return 0;
  return static_cast<std::int64_t>(k);
}

// Throws unless the projector's settings fit the tower; `fail(key, message)`
// as above, with the keys of config.json's root.
template <class Fail>
void check_projector_config(const VisionConfig& v, const ProjectorConfig& p, Fail&& fail) {
  using tessera::detail::concat;
  const std::int64_t layers = v.num_hidden_layers;
  if (p.select_layer < -(layers + 1) || p.select_layer > layers) {
    fail("select_layer", concat("is ", p.select_layer, "; the tower has ", layers, " layers, so hidden_states has ",
                                layers + 1, " entries (select_layer in [", -(layers + 1), ", ", layers, "])"));
  }
  const std::int64_t k = shuffle_factor(p.downsample_ratio);
  if (k == 0) {
    fail("downsample_ratio", concat("is ", p.downsample_ratio,
                                    "; the pixel shuffle needs 1 / downsample_ratio to be a positive integer "
                                    "(0.5 in every published config)"));
  }
  if (p.ps_version != "v1" && p.ps_version != "v2") {
    fail("ps_version", concat("is \"", p.ps_version, "\"; the pixel shuffle supports \"v1\" and \"v2\""));
  }
  if (p.image_size <= 0 || p.image_size > kMaxSide || p.image_size % v.patch_size != 0) {
    fail("force_image_size", concat("is ", p.image_size, "; the tile size must be a positive multiple of patch_size ",
                                    v.patch_size, " (at most ", kMaxSide, ")"));
  }
  const std::int64_t grid = p.image_size / v.patch_size;
  if (grid % k != 0) {
    fail("downsample_ratio", concat("is ", p.downsample_ratio, ": its factor ", k, " does not divide the tile's ",
                                    grid, " x ", grid, " patch grid (force_image_size ", p.image_size,
                                    " / patch_size ", v.patch_size, ")"));
  }
  if (p.llm_hidden <= 0 || p.llm_hidden > kMaxWidth) {
    fail("llm_config.hidden_size", concat("must be a positive integer up to ", kMaxWidth, ", but it is ",
                                          p.llm_hidden));
  }
}

template <class T>
Tensor<Host, T> host_tensor(const std::vector<T>& values) {
  return Tensor<Host, T>::from(std::span<const T>(values), Shape{static_cast<std::int64_t>(values.size())});
}

// Loads `name` as Tensor<D, T> after checking its shape: FormatError naming
// the module, the checkpoint, the tensor and both shapes. A missing tensor is
// the checkpoint's ValueError naming it.
template <Device D, FloatType T>
Tensor<D, T> load_checked(const io::Checkpoint& checkpoint, std::string_view module, const std::string& name,
                          const Shape& expected) {
  const Shape actual = checkpoint.info(name).shape;
  if (!(actual == expected)) {
    throw FormatError(tessera::detail::concat(module, ": checkpoint '", checkpoint.directory().string(),
                                              "': tensor '", name, "' has shape ", actual.to_string(),
                                              " but the config expects ", expected.to_string()));
  }
  return checkpoint.load<D, T>(name);
}

// torch's bicubic weights and clamped taps for one output index (see the
// top of the file).
struct CubicTaps {
  std::int64_t index[4];
  float weight[4];
};

inline CubicTaps cubic_taps(std::int64_t in, std::int64_t out, std::int64_t i) {
  constexpr float A = -0.75f;
  const auto cc1 = [](float x) { return ((A + 2.0f) * x - (A + 3.0f)) * x * x + 1.0f; };
  const auto cc2 = [](float x) { return ((A * x - 5.0f * A) * x + 8.0f * A) * x - 4.0f * A; };
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const float src = scale * (static_cast<float>(i) + 0.5f) - 0.5f;
  const std::int64_t i0 = std::min(static_cast<std::int64_t>(std::floor(src)), in - 1);
  const float t = std::clamp(src - static_cast<float>(i0), 0.0f, 1.0f);
  CubicTaps taps{};
  taps.weight[0] = cc2(t + 1.0f);
  taps.weight[1] = cc1(t);
  taps.weight[2] = cc1(1.0f - t);
  taps.weight[3] = cc2(2.0f - t);
  for (std::int64_t j = 0; j < 4; ++j) taps.index[j] = std::clamp<std::int64_t>(i0 - 1 + j, 0, in - 1);
  return taps;
}

}  // namespace vision_detail

// Layers of the tower the feature layer needs: num_hidden_layers + 1 +
// select_layer for a negative select_layer (hidden_states[-k]), select_layer
// itself otherwise. ValueError naming select_layer when it is out of range.
inline std::int64_t layers_used(const VisionConfig& v, std::int64_t select_layer) {
  const std::int64_t layers = v.num_hidden_layers;
  if (select_layer < -(layers + 1) || select_layer > layers) {
    throw ValueError(tessera::detail::concat(vision_detail::kTower, ": select_layer ", select_layer,
                                             " is outside [", -(layers + 1), ", ", layers, "] for a tower of ",
                                             layers, " layers"));
  }
  return select_layer < 0 ? layers + 1 + select_layer : select_layer;
}

// Feature rows per tile: (force_image_size / patch_size)^2 * downsample_ratio^2
// (256 for every published size). ValueError naming the field when the
// projector's settings do not fit the tower.
inline std::int64_t tokens_per_tile(const VisionConfig& v, const ProjectorConfig& p) {
  vision_detail::check_projector_config(v, p, [](std::string_view key, const std::string& message) {
    throw ValueError(tessera::detail::concat(vision_detail::kProjector, ": config field ", key, " ", message));
  });
  const std::int64_t side = p.image_size / v.patch_size / vision_detail::shuffle_factor(p.downsample_ratio);
  return side * side;
}

// The stored patch position table `src` [in * in, C] (row-major grid,
// float32) resized into `dst` [out * out, C] as F.interpolate(mode='bicubic',
// align_corners=False) does (see the top of the file).
inline void bicubic_resize_positions_into(const float* src, std::int64_t in, std::int64_t out, std::int64_t channels,
                                          float* dst) {
  std::vector<vision_detail::CubicTaps> taps;
  for (std::int64_t i = 0; i < out; ++i) taps.push_back(vision_detail::cubic_taps(in, out, i));
  std::vector<double> acc(static_cast<std::size_t>(channels));
  for (std::int64_t y = 0; y < out; ++y) {
    for (std::int64_t x = 0; x < out; ++x, dst += channels) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int a = 0; a < 4; ++a) {
        for (int b = 0; b < 4; ++b) {
          const double w = static_cast<double>(taps[static_cast<std::size_t>(y)].weight[a]) *
                           static_cast<double>(taps[static_cast<std::size_t>(x)].weight[b]);
          const float* row = src + (taps[static_cast<std::size_t>(y)].index[a] * in +
                                    taps[static_cast<std::size_t>(x)].index[b]) * channels;
          for (std::int64_t c = 0; c < channels; ++c) acc[static_cast<std::size_t>(c)] += w * row[c];
        }
      }
      for (std::int64_t c = 0; c < channels; ++c) dst[c] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
    }
  }
}

// The same as a new tensor; out == in returns the table unchanged.
inline Tensor<Host, float> bicubic_resize_positions(const Tensor<Host, float>& table, std::int64_t in,
                                                    std::int64_t out) {
  using tessera::detail::concat;
  if (in <= 0 || out <= 0 || in > vision_detail::kMaxSide || out > vision_detail::kMaxSide || table.rank() != 2 ||
      table.dim(0) != in * in) {
    throw ShapeError(concat("bicubic_resize_positions: table ", table.shape().to_string(), " must be [", in, " * ",
                            in, ", C] and both grids positive (", in, " -> ", out, ")"));
  }
  if (in == out) return contiguous(table.view());
  Tensor<Host, float> resized(Shape{out * out, table.dim(1)});
  bicubic_resize_positions_into(table.raw(), in, out, table.dim(1), resized.raw());
  return resized;
}

// The tower's output row of every element of the shuffled features: for
// `tiles` tiles of 1 + grid^2 rows each (CLS first), output token t of tile
// b (raster order over the grid/k x grid/k shuffled grid) takes k^2
// consecutive rows, sub-position (a, c) a-major, from patch (k u + a, k w +
// c) where (u, w) = (t / side, t % side) for "v2" and (t % side, t / side)
// for "v1". [tiles * grid^2] ids; gathering them and viewing the result as
// [tiles * side^2, k^2 C] is the reference's pixel_shuffle + reshape.
inline std::vector<std::int64_t> shuffle_source_rows(std::int64_t tiles, std::int64_t grid, std::int64_t factor,
                                                     std::string_view ps_version) {
  using tessera::detail::concat;
  if (tiles <= 0 || grid <= 0 || factor <= 0 || grid % factor != 0 || grid > vision_detail::kMaxSide) {
    throw ValueError(concat("shuffle_source_rows: ", tiles, " tiles of a ", grid, " x ", grid,
                            " grid cannot be shuffled by a factor of ", factor, " (it must divide the grid)"));
  }
  if (ps_version != "v1" && ps_version != "v2") {
    throw ValueError(concat("shuffle_source_rows: ps_version \"", ps_version, "\" is neither \"v1\" nor \"v2\""));
  }
  const bool transposed = ps_version == "v1";
  const std::int64_t side = grid / factor, rows = 1 + grid * grid;
  std::vector<std::int64_t> ids;
  ids.reserve(static_cast<std::size_t>(tiles * grid * grid));
  for (std::int64_t b = 0; b < tiles; ++b) {
    for (std::int64_t t = 0; t < side * side; ++t) {
      const std::int64_t u = transposed ? t % side : t / side, w = transposed ? t / side : t % side;
      for (std::int64_t a = 0; a < factor; ++a) {
        for (std::int64_t c = 0; c < factor; ++c) {
          ids.push_back(b * rows + 1 + (factor * u + a) * grid + (factor * w + c));
        }
      }
    }
  }
  return ids;
}

inline VisionConfig VisionConfig::from_json(const nlohmann::json& vision_config, const std::string& file) {
  const io::detail::JsonFields f(vision_config, file, "vision_config.");
  const auto required = [&](std::string_view key) { return f.required_integer(key, "the vision tower needs it"); };
  VisionConfig c;
  c.hidden_size = required("hidden_size");
  c.num_attention_heads = required("num_attention_heads");
  c.intermediate_size = required("intermediate_size");
  c.num_hidden_layers = required("num_hidden_layers");
  c.image_size = f.integer("image_size", c.image_size);
  c.patch_size = f.integer("patch_size", c.patch_size);
  c.num_channels = f.integer("num_channels", c.num_channels);
  const std::string norm = f.string("norm_type", "rms_norm");
  if (norm == "layer_norm") c.norm_type = NormType::layer_norm;
  else if (norm == "rms_norm") c.norm_type = NormType::rms_norm;
  else throw f.error("norm_type", tessera::detail::concat("is \"", norm, "\"; InternViT supports \"layer_norm\" and "
                                                          "\"rms_norm\""));
  c.qkv_bias = f.boolean("qkv_bias", c.qkv_bias);
  c.qk_normalization = f.boolean("qk_normalization", c.qk_normalization);
  c.layer_norm_eps = f.number("layer_norm_eps", c.layer_norm_eps);
  c.hidden_act = f.string("hidden_act", c.hidden_act);
  vision_detail::check_vision_config(c, [&](std::string_view key, const std::string& message) {
    throw f.error(key, message);
  });
  return c;
}

inline ProjectorConfig ProjectorConfig::from_json(const nlohmann::json& root, const VisionConfig& vision,
                                                  const std::string& file) {
  const io::detail::JsonFields f(root, file);
  ProjectorConfig p;
  p.select_layer = f.integer("select_layer", -1);
  p.downsample_ratio = f.number("downsample_ratio", 0.5);
  p.ps_version = f.string("ps_version", "v1");
  p.image_size = f.optional_integer("force_image_size").value_or(vision.image_size);
  if (!f.has_value("llm_config")) throw f.error("llm_config", "is missing (the projector's width is its hidden_size)");
  const io::detail::JsonFields llm(f.raw("llm_config"), file, "llm_config.");
  p.llm_hidden = llm.required_integer("hidden_size", "the projector's output width");
  vision_detail::check_projector_config(vision, p, [&](std::string_view key, const std::string& message) {
    throw FormatError(tessera::detail::concat("'", file, "': \"", key, "\" ", message));
  });
  return p;
}

// The InternViT tower (up to the feature layer) and mlp1, on one device.
template <Device D, FloatType T>
class VisionEncoder {
 public:
  using device_type = D;

  // Loads the tower's embeddings and its first layers_used(vision,
  // select_layer) layers from `checkpoint` under `vision_prefix`, and mlp1
  // under `projector_prefix`. Every tensor's shape is checked against the
  // configs before it is read (FormatError naming the module, the
  // checkpoint, the tensor and both shapes); a missing tensor is the
  // checkpoint's ValueError naming it; a hand-built config with bad values
  // is a ValueError naming the field. The position table is resized to the
  // tile grid here, once.
  static VisionEncoder load(const io::Checkpoint& checkpoint, const VisionConfig& vision,
                            const ProjectorConfig& projector, std::string_view vision_prefix = "vision_model.",
                            std::string_view projector_prefix = "mlp1.") {
    using tessera::detail::concat;
    vision_detail::check_vision_config(vision, [&](std::string_view key, const std::string& message) {
      throw ValueError(concat(vision_detail::kTower, ": config field ", key, " ", message));
    });
    const std::int64_t used = layers_used(vision, projector.select_layer);
    (void)tokens_per_tile(vision, projector);  // checks the projector's settings
    const std::string vp(vision_prefix), pp(projector_prefix);
    const std::int64_t c = vision.hidden_size, inter = vision.intermediate_size;
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return vision_detail::load_checked<D, T>(checkpoint, vision_detail::kTower, vp + name, shape);
    };
    const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in, bool bias) {
      Tensor<D, T> w = weight(name + ".weight", Shape{out, in});
      return bias ? nn::Linear<D, T>(std::move(w), weight(name + ".bias", Shape{out})) : nn::Linear<D, T>(std::move(w));
    };
    const bool layer_norm = vision.norm_type == NormType::layer_norm;
    const auto norm = [&](const std::string& name) {
      return Norm{weight(name + ".weight", Shape{c}),
                  layer_norm ? std::optional<Tensor<D, T>>(weight(name + ".bias", Shape{c})) : std::nullopt};
    };
    Embeddings embeddings = load_embeddings(checkpoint, vision, projector, vp);
    std::vector<Layer> layers;
    for (std::int64_t i = 0; i < used; ++i) {
      const std::string l = concat("encoder.layers.", i, ".");
      Layer layer{norm(l + "norm1"),
                  norm(l + "norm2"),
                  linear(l + "attn.qkv", 3 * c, c, vision.qkv_bias),
                  linear(l + "attn.proj", c, c, true),
                  linear(l + "mlp.fc1", inter, c, true),
                  linear(l + "mlp.fc2", c, inter, true),
                  std::nullopt,
                  std::nullopt,
                  weight(l + "ls1", Shape{c}),
                  weight(l + "ls2", Shape{c})};
      if (vision.qk_normalization) {
        layer.q_norm = weight(l + "attn.q_norm.weight", Shape{c});
        layer.k_norm = weight(l + "attn.k_norm.weight", Shape{c});
      }
      layers.push_back(std::move(layer));
    }
    Projector mlp1 = load_projector(checkpoint, vision, projector, pp);
    return VisionEncoder(vision, projector, std::move(embeddings), std::move(layers), std::move(mlp1));
  }

  const VisionConfig& config() const noexcept { return vision_; }
  const ProjectorConfig& projector_config() const noexcept { return projector_; }
  // The layers loaded and run: layers_used(config(), select_layer).
  std::int64_t layers() const noexcept { return static_cast<std::int64_t>(layers_.size()); }

  // pixels [tiles, num_channels, S, S], S = force_image_size, on D ->
  // [tiles, 1 + (S / patch)^2, hidden]: hidden_states[select_layer] of the
  // reference, CLS row first (for tests and callers that want the tower on
  // its own). ShapeError naming the sizes for any other pixel shape.
  Tensor<D, T> hidden_states(const Tensor<D, T>& pixels) const {
    const std::int64_t tiles = check_pixels(pixels, "hidden_states");
    Tensor<D, T> x = encode(pixels);
    x.reshape_inplace(Shape{tiles, sequence(), vision_.hidden_size});
    return x;
  }

  // pixels [tiles, num_channels, S, S] -> [tiles * tokens_per_tile,
  // llm_hidden]: tiles in order, each tile's tokens in raster order, the rows
  // written over the <IMG_CONTEXT> embeddings. A template so that pixels
  // from another device get tessera's sentence, not a deleted conversion.
  template <AnyTensor X>
  Tensor<D, T> forward(const X& pixels) const {
    static_assert(same_device<device_of<X>, D>,
                  "tessera: the InternVL2 vision encoder and its input pixels live on different devices; move the "
                  "pixels with tessera::to<Device>(pixels) to the encoder's device first");
    static_assert(std::is_same_v<X, Tensor<D, T>>,
                  "tessera: the InternVL2 vision encoder takes its pixels as a Tensor of its own element type; cast "
                  "them with ops::cast<T>(pixels)");
    if constexpr (same_device<device_of<X>, D> && std::is_same_v<X, Tensor<D, T>>) {
      const std::int64_t tiles = check_pixels(pixels, "forward");
      const Tensor<D, T> features = shuffle(encode(pixels), tiles);
      const Projector& p = mlp1_;
      return p.fc2.forward(ops::gelu(p.fc1.forward(ops::layer_norm(features, p.norm_w, p.norm_b,
                                                                   vision_detail::kProjectorNormEps))));
    }
  }

 private:
  struct Norm {
    Tensor<D, T> weight;
    std::optional<Tensor<D, T>> bias;  // LayerNorm only
  };
  struct Layer {
    Norm norm1, norm2;
    nn::Linear<D, T> qkv, proj, fc1, fc2;
    std::optional<Tensor<D, T>> q_norm, k_norm;  // qk_normalization: RMSNorm weights [C]
    Tensor<D, T> ls1, ls2;
  };
  struct Embeddings {
    Tensor<D, T> patch_w, patch_b;  // Conv2d [C, channels, p, p], [C]
    Tensor<D, T> cls;               // [1, C]
    Tensor<D, T> positions;         // [1 + G'^2, C], resized to the tile grid
  };
  struct Projector {
    Tensor<D, T> norm_w, norm_b;  // mlp1.0, [k^2 C]
    nn::Linear<D, T> fc1, fc2;    // mlp1.1, mlp1.3
  };

  VisionEncoder(VisionConfig vision, ProjectorConfig projector, Embeddings embeddings, std::vector<Layer> layers,
                Projector mlp1)
      : vision_(std::move(vision)),
        projector_(std::move(projector)),
        embeddings_(std::move(embeddings)),
        layers_(std::move(layers)),
        mlp1_(std::move(mlp1)) {}

  static Embeddings load_embeddings(const io::Checkpoint& checkpoint, const VisionConfig& v,
                                    const ProjectorConfig& p, const std::string& prefix) {
    const std::int64_t c = v.hidden_size, patch = v.patch_size, table = v.table_grid();
    const std::int64_t grid = p.image_size / patch;
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return vision_detail::load_checked<D, T>(checkpoint, vision_detail::kTower, prefix + name, shape);
    };
    Tensor<D, T> patch_w = weight("embeddings.patch_embedding.weight", Shape{c, v.num_channels, patch, patch});
    Tensor<D, T> patch_b = weight("embeddings.patch_embedding.bias", Shape{c});
    Tensor<D, T> cls = weight("embeddings.class_embedding", Shape{1, 1, c});
    cls.reshape_inplace(Shape{1, c});
    if (grid == table) {
      // Every published checkpoint: the reference's resize is the identity
      // (bicubic at scale 1 takes each value's own weight 1), so the table
      // loads as stored, with no float32 copies on the host.
      Tensor<D, T> positions = weight("embeddings.position_embedding", Shape{1, 1 + table * table, c});
      positions.reshape_inplace(Shape{1 + table * table, c});
      return Embeddings{std::move(patch_w), std::move(patch_b), std::move(cls), std::move(positions)};
    }
    // The table in float32 (the reference's pos_embed.float()), resized
    // straight into the tower's table, then cast to T; the CLS position is
    // used as stored. Only the stored table is held beside it while loading.
    Tensor<Host, float> rows(Shape{1 + grid * grid, c});
    {
      const Tensor<Host, float> stored = vision_detail::load_checked<Host, float>(
          checkpoint, vision_detail::kTower, prefix + "embeddings.position_embedding", Shape{1, 1 + table * table, c});
      std::copy_n(stored.raw(), c, rows.raw());
      bicubic_resize_positions_into(stored.raw() + c, table, grid, c, rows.raw() + c);
    }
    Tensor<D, T> positions = [&] {
      if constexpr (std::same_as<D, Host> && std::same_as<T, float>) {
        return std::move(rows);
      } else {
        return to<D>(ops::cast<T>(rows));
      }
    }();
    return Embeddings{std::move(patch_w), std::move(patch_b), std::move(cls), std::move(positions)};
  }

  static Projector load_projector(const io::Checkpoint& checkpoint, const VisionConfig& v, const ProjectorConfig& p,
                                  const std::string& prefix) {
    const std::int64_t k = vision_detail::shuffle_factor(p.downsample_ratio);
    const std::int64_t wide = k * k * v.hidden_size, h = p.llm_hidden;
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return vision_detail::load_checked<D, T>(checkpoint, vision_detail::kProjector, prefix + name, shape);
    };
    return Projector{weight("0.weight", Shape{wide}), weight("0.bias", Shape{wide}),
                     nn::Linear<D, T>(weight("1.weight", Shape{h, wide}), weight("1.bias", Shape{h})),
                     nn::Linear<D, T>(weight("3.weight", Shape{h, h}), weight("3.bias", Shape{h}))};
  }

  // Rows per tile in the tower: CLS + the tile's patches.
  std::int64_t sequence() const {
    const std::int64_t grid = projector_.image_size / vision_.patch_size;
    return 1 + grid * grid;
  }

  // The number of tiles, after checking the pixels' shape.
  std::int64_t check_pixels(const Tensor<D, T>& pixels, std::string_view op) const {
    const std::int64_t s = projector_.image_size;
    if (pixels.rank() != 4 || pixels.dim(0) <= 0 || pixels.dim(1) != vision_.num_channels || pixels.dim(2) != s ||
        pixels.dim(3) != s) {
      throw ShapeError(tessera::detail::concat(vision_detail::kTower, "::", op, ": pixels ",
                                               pixels.shape().to_string(), " must be [tiles, ", vision_.num_channels,
                                               ", ", s, ", ", s, "] (num_channels, force_image_size ", s,
                                               "), with at least one tile"));
    }
    return pixels.dim(0);
  }

  // The tower over every tile: [tiles * (1 + N), C], tiles one after another.
  Tensor<D, T> encode(const Tensor<D, T>& pixels) const {
    const std::int64_t tiles = pixels.dim(0), rows = sequence();
    std::vector<std::int32_t> offsets;
    for (std::int64_t b = 0; b <= tiles; ++b) offsets.push_back(static_cast<std::int32_t>(b * rows));
    const Tensor<D, std::int32_t> cu = to<D>(vision_detail::host_tensor(offsets));
    Tensor<D, T> x = embed(pixels);
    for (const Layer& layer : layers_) {
      ops::residual_add(x, ops::mul(attention(layer, norm(layer.norm1, x), cu), layer.ls1));
      ops::residual_add(x, ops::mul(mlp(layer, norm(layer.norm2, x)), layer.ls2));
    }
    return x;
  }

  // [cls | patches] + positions per tile: [tiles * (1 + N), C].
  Tensor<D, T> embed(const Tensor<D, T>& pixels) const {
    const std::int64_t tiles = pixels.dim(0), rows = sequence(), c = vision_.hidden_size;
    Tensor<D, T> joined;
    {
      const Tensor<D, T> patches = ops::patch_embed2d(pixels, embeddings_.patch_w, embeddings_.patch_b);
      std::vector<TensorView<D, const T>> parts;
      for (std::int64_t b = 0; b < tiles; ++b) {
        parts.push_back(embeddings_.cls.view());
        parts.push_back(patches.view().select(0, b));
      }
      joined = ops::concat(parts, 0);
    }
    joined.reshape_inplace(Shape{tiles, rows, c});
    Tensor<D, T> x = ops::add(joined, embeddings_.positions);  // [1 + N, C] broadcast over the tiles
    x.reshape_inplace(Shape{tiles * rows, c});
    return x;
  }

  Tensor<D, T> norm(const Norm& n, const Tensor<D, T>& x) const {
    const double eps = vision_.layer_norm_eps;
    return n.bias ? ops::layer_norm(x, n.weight, *n.bias, eps) : ops::rms_norm(x, n.weight, eps);
  }

  // Bidirectional self-attention within each tile, then proj.
  Tensor<D, T> attention(const Layer& layer, const Tensor<D, T>& h, const Tensor<D, std::int32_t>& cu) const {
    const std::int64_t rows = h.dim(0), c = vision_.hidden_size, heads = vision_.num_attention_heads;
    const std::int64_t hd = vision_.head_dim();
    ops::AttentionOptions options;
    options.mask = ops::MaskKind::Full;  // scale: the default head_dim^-0.5
    Tensor<D, T> out;
    {
      const Tensor<D, T> qkv = layer.qkv.forward(h);  // [q | k | v], each head-major
      const auto per_head = qkv.view().reshape({rows, 3, heads, hd});
      if (!layer.q_norm) {
        out = ops::attention(per_head.select(1, 0), per_head.select(1, 1), per_head.select(1, 2), cu, cu, options);
      } else {
        // q_norm / k_norm span all heads: RMSNorm over the whole C-wide q (k).
        const auto whole = qkv.view().reshape({rows, 3, c});
        const Tensor<D, T> q = ops::rms_norm(whole.select(1, 0), *layer.q_norm, vision_.layer_norm_eps);
        const Tensor<D, T> k = ops::rms_norm(whole.select(1, 1), *layer.k_norm, vision_.layer_norm_eps);
        out = ops::attention(q.view().reshape({rows, heads, hd}), k.view().reshape({rows, heads, hd}),
                             per_head.select(1, 2), cu, cu, options);
      }
    }
    out.reshape_inplace(Shape{rows, c});
    return layer.proj.forward(out);
  }

  Tensor<D, T> mlp(const Layer& layer, const Tensor<D, T>& h) const {
    return layer.fc2.forward(ops::gelu(layer.fc1.forward(h)));
  }

  // The pixel shuffle with the CLS rows dropped: [tiles * side^2, k^2 C].
  Tensor<D, T> shuffle(const Tensor<D, T>& hidden, std::int64_t tiles) const {
    const std::int64_t k = vision_detail::shuffle_factor(projector_.downsample_ratio);
    const std::int64_t grid = projector_.image_size / vision_.patch_size;
    const std::vector<std::int64_t> rows = shuffle_source_rows(tiles, grid, k, projector_.ps_version);
    Tensor<D, T> out = ops::embedding(hidden, to<D>(vision_detail::host_tensor(rows)));
    out.reshape_inplace(Shape{static_cast<std::int64_t>(rows.size()) / (k * k), k * k * vision_.hidden_size});
    return out;
  }

  VisionConfig vision_;
  ProjectorConfig projector_;
  Embeddings embeddings_;
  std::vector<Layer> layers_;  // the first layers_used() layers
  Projector mlp1_;
};

}  // namespace tessera::models::internvl2

// =============================================================================
// The encoder's cost for the planner: what one VisionEncoder::forward over
// `tiles` tiles allocates on its device, next to the code it mirrors.
// tests/unit/test_internvl2_vision.cpp holds it to the memory ledger.
// =============================================================================

#include "../placement/model_description.hpp"

namespace tessera::models::internvl2 {

// Bytes on the encoder's device at the worst moment of one forward over
// `tiles` tiles of force_image_size, elements of `element_size` bytes: the
// float pixels the model copies there and their cast to T (alive
// throughout), then the worst of
//   - the embedding: im2col columns and patch rows, patch rows and the
//     joined [cls | patches], joined and x (with cu_seqlens, int32, on the
//     host and the device);
//   - a layer: x and norm1(x), then qkv, the normed q and k (qk
//     normalization), the attention output (and its float copies of q, k, v
//     for half types on a CPU); or the output and proj; or norm2(x), fc1,
//     gelu, fc2; then the branch and its ls product;
//   - the shuffle: the tower's output, the row ids (int64, host and device)
//     and the gathered features;
//   - mlp1: the features, LayerNorm, fc1, gelu and fc2;
// plus the float copies of the widest half-precision GEMM (ops/matmul.hpp).
// Host-built index tensors are counted as if on the device (on a CPU slot
// they are), so it is an upper bound on every device; the test holds the
// ledger's measured peak under it. Only the layers up to select_layer run.
// Bytes the forward holds on the host whichever device runs it: the
// index tensors built there before to<> moves them (the pixel shuffle's
// source rows, the tiles' cu_seqlens), alive while the device copy is used.
// encoder_cost counts them on the tower's device too, so a tower on the
// host is charged twice for them (a few KiB per tile).
inline std::uint64_t encoder_host_cost(const VisionConfig& v, const ProjectorConfig& p, std::uint64_t tiles) {
  if (tiles == 0) return 0;
  const auto grid = static_cast<std::uint64_t>(p.image_size / v.patch_size);
  return 8 * tiles * grid * grid + 4 * (tiles + 1);
}

inline std::uint64_t encoder_cost(const VisionConfig& v, const ProjectorConfig& p, std::uint64_t tiles,
                                  std::size_t element_size) {
  using u64 = std::uint64_t;
  if (tiles == 0) return 0;
  const u64 e = element_size, B = tiles;
  const bool half = e != 4;
  const auto widen = [e](u64 m, u64 k, u64 n) { return placement::gemm_widening_bytes(e, m, k, n); };
  const u64 C = static_cast<u64>(v.hidden_size), I = static_cast<u64>(v.intermediate_size);
  const u64 S = static_cast<u64>(p.image_size), P = static_cast<u64>(v.patch_size);
  const u64 pd = static_cast<u64>(v.num_channels) * P * P, grid = S / P;
  const u64 N = B * grid * grid, T = N + B;  // patch rows, tower rows (with CLS)
  const u64 k = static_cast<u64>(vision_detail::shuffle_factor(p.downsample_ratio));
  const u64 M = k == 0 ? 0 : N / (k * k), W = k * k * C, H = static_cast<u64>(p.llm_hidden);
  const u64 pixels = 4 * N * pd + (half ? N * pd * e : 0);
  const u64 cu = 8 * (B + 1);
  const u64 TC = T * C * e;
  const u64 embed = std::max({N * pd * e + N * C * e, N * C * e + TC, 2 * TC});
  const std::int64_t used = p.select_layer < 0 ? v.num_hidden_layers + 1 + p.select_layer : p.select_layer;
  const bool layers_run = used > 0;
  const u64 qk = v.qk_normalization ? 2 * TC : 0;
  const u64 attention = std::max(4 * TC + qk + (half ? 12 * T * C : 0), 2 * TC);
  const u64 mlp = std::max(2 * T * I * e + TC, 2 * TC);
  const u64 layer = layers_run ? 2 * TC + std::max(attention, mlp) : 0;
  const u64 shuffle = TC + 16 * N + N * C * e;
  const u64 project = 2 * M * W * e + 3 * M * H * e;
  u64 widest = std::max({widen(N, pd, C), widen(M, W, H), widen(M, H, H)});
  if (layers_run) widest = std::max({widest, widen(T, C, 3 * C), widen(T, C, C), widen(T, C, I), widen(T, I, C)});
  return pixels + std::max({cu + embed, cu + layer, shuffle, project}) + widest;
}

}  // namespace tessera::models::internvl2
