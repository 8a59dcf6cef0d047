// Qwen2.5-VL on the CPU.
//
// The processor runs at real scale (its cost does not depend on the model):
// smart_resize + PIL-exact bicubic + normalize + patchify of a photo-sized
// image under the published preprocessor_config.json (max_pixels 12845056),
// and of a 16-frame video; reported as input megapixels per second.
//
// The model runs on the tiny fixture checkpoint (tests/fixtures/qwen2_5_vl/
// legacy): not a measure of a real model's speed, but a regression tracker
// for the per-call overheads of the multimodal path (processor, vision tower
// with its window permutation, M-RoPE tables, placeholder scatter, decode
// with the rope delta). Wall-clock time (UseRealTime): ops run on all
// OpenMP threads.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <vector>

#include <tessera/models/qwen2_5_vl.hpp>

namespace {
using namespace tessera;
namespace vl = tessera::models::qwen2_5_vl;

std::filesystem::path fixture() {
  return std::filesystem::path(TESSERA_SOURCE_DIR) / "tests" / "fixtures" / "qwen2_5_vl";
}

// A noisy gradient, so the resize does real arithmetic on varied pixels.
vl::RgbImage synthetic_image(std::int64_t width, std::int64_t height, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> noise(-20, 20);
  vl::RgbImage img;
  img.width = width;
  img.height = height;
  img.pixels.resize(static_cast<std::size_t>(width * height * 3));
  for (std::int64_t y = 0; y < height; ++y) {
    for (std::int64_t x = 0; x < width; ++x) {
      for (std::int64_t c = 0; c < 3; ++c) {
        const int v = static_cast<int>((x * 255 / width + y * 255 / height + c * 60) % 256) + noise(gen);
        img.pixels[static_cast<std::size_t>((y * width + x) * 3 + c)] = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
      }
    }
  }
  return img;
}

void set_megapixels(benchmark::State& state, double pixels_per_call) {
  state.counters["Mpx/s"] =
      benchmark::Counter(pixels_per_call * 1e-6 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// Args: width, height. The published defaults (min 3136, max 12845056).
void BM_Qwen2_5_VLPreprocessImage(benchmark::State& state) {
  const auto img = synthetic_image(state.range(0), state.range(1), 7);
  const vl::ImageProcessorConfig cfg;
  for (auto _ : state) benchmark::DoNotOptimize(vl::preprocess_image(img, cfg));
  set_megapixels(state, static_cast<double>(state.range(0) * state.range(1)));
}
BENCHMARK(BM_Qwen2_5_VLPreprocessImage)->Args({640, 480})->Args({1920, 1080})->Unit(benchmark::kMillisecond)->UseRealTime();

// 16 frames of 640x360 at 2 fps.
void BM_Qwen2_5_VLPreprocessVideo(benchmark::State& state) {
  std::vector<vl::RgbImage> frames;
  for (unsigned i = 0; i < 16; ++i) frames.push_back(synthetic_image(640, 360, i));
  const vl::ImageProcessorConfig cfg;
  for (auto _ : state) benchmark::DoNotOptimize(vl::preprocess_video(frames, 2.0, cfg));
  set_megapixels(state, 16.0 * 640 * 360);
}
BENCHMARK(BM_Qwen2_5_VLPreprocessVideo)->Unit(benchmark::kMillisecond)->UseRealTime();

using TinyModel = models::Qwen2_5_VL<Single<Cpu<0>>, float>;

const TinyModel& tiny_model() {
  static const TinyModel model = TinyModel::load(fixture() / "legacy");
  return model;
}

// The fixture's one-image prompt: the chat template around image_a.png.
vl::Prompt tiny_prompt() {
  const auto& model = tiny_model();
  const auto cfg = vl::ImageProcessorConfig::load(fixture() / "legacy" / "preprocessor_config.json");
  vl::Prompt p;
  p.images.push_back(vl::preprocess_image(vl::load_rgb_image(fixture() / "images" / "image_a.png"), cfg));
  // <|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|> + a few text ids
  const auto& t = model.config().tokens;
  const std::vector<std::int64_t> ids = {1044, 872, 198, t.vision_start, t.image, t.vision_end, 311, 967, 1045};
  const std::vector<vl::GridTHW> grids{p.images[0].grid_thw};
  p.ids = vl::expand_vision_placeholders(ids, grids, {}, t, model.config().vision.spatial_merge_size);
  return p;
}

// The vision tower alone on the fixture image (240 patches).
void BM_Qwen2_5_VLTinyVisionTower(benchmark::State& state) {
  const vl::Prompt p = tiny_prompt();
  for (auto _ : state) benchmark::DoNotOptimize(tiny_model().image_features(p.images));
}
BENCHMARK(BM_Qwen2_5_VLTinyVisionTower)->Unit(benchmark::kMillisecond)->UseRealTime();

// Prefill (vision tower, scatter, M-RoPE, decoder) of the one-image prompt.
void BM_Qwen2_5_VLTinyPrefill(benchmark::State& state) {
  const vl::Prompt p = tiny_prompt();
  for (auto _ : state) {
    auto cache = tiny_model().new_cache(128);
    benchmark::DoNotOptimize(tiny_model().forward(p, cache));
  }
  state.counters["tokens"] = static_cast<double>(p.ids.size());
}
BENCHMARK(BM_Qwen2_5_VLTinyPrefill)->Unit(benchmark::kMillisecond)->UseRealTime();

// One decode step after the prefill (positions continue with the rope
// delta), over the prompt plus at most 64 generated tokens: the cache is
// refilled from the prompt every 64 steps, outside the timing.
void BM_Qwen2_5_VLTinyDecodeStep(benchmark::State& state) {
  const vl::Prompt p = tiny_prompt();
  const auto capacity = static_cast<std::int64_t>(p.ids.size()) + 64;
  auto cache = tiny_model().new_cache(capacity);
  (void)tiny_model().forward(p, cache);
  const std::int64_t id = 311;
  for (auto _ : state) {
    if (cache.length() == capacity) {
      state.PauseTiming();
      cache = tiny_model().new_cache(capacity);
      (void)tiny_model().forward(p, cache);
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(tiny_model().forward(std::span<const std::int64_t>(&id, 1), cache));
  }
}
BENCHMARK(BM_Qwen2_5_VLTinyDecodeStep)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
