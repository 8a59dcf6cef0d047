// Placement on CPU slots: what splitting a model costs per call.
//
// BM_AllReduceInProcess: the in-process all-reduce of a tensor-parallel
// group (to<> copy of each part to the first device, ops::add in rank
// order, copies back), for a decode row and a prefill block of a 7B-sized
// hidden state; reported as bytes of one part reduced per second. Fresh
// buffers are allocated per call (as in the model), so large parts pay the
// kernel's first-touch page faults for the copies.
//
// BM_PlacedDecodeStep: one greedy decode step of the tiny Qwen2.5-VL fixture
// under Single, Pipeline and TensorParallel over CPU slots: the per-step
// overhead of stage crossings and all-reduces (the tiny model's own compute
// is small, so this is a regression tracker for that overhead, not a speed
// claim about real models).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>

#include <tessera/comm/group.hpp>
#include <tessera/models/qwen2_5_vl.hpp>

namespace {
using namespace tessera;

template <class T>
Tensor<Cpu<0>, T> random_part(std::int64_t rows, std::int64_t cols, unsigned seed) {
  Tensor<Cpu<0>, float> t(Shape{rows, cols});
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  for (float& v : t.span()) v = dist(gen);
  if constexpr (std::is_same_v<T, float>) return t;
  else return ops::cast<T>(t);
}

// Args: rows of a [rows, 3584] part.
template <class T>
void BM_AllReduceInProcess(benchmark::State& state) {
  const std::int64_t rows = state.range(0), cols = 3584;
  const auto a = random_part<T>(rows, cols, 1);
  const auto b = random_part<T>(rows, cols, 2);
  const comm::Group<Cpu<0>, Cpu<1>> group;
  for (auto _ : state) {
    state.PauseTiming();  // the parts, as the row-parallel layers leave them
    Distributed<Partial<Cpu<0>, Cpu<1>>, T> partial;
    partial.template set<0>(to<Cpu<0>>(a));
    partial.template set<1>(to<Cpu<1>>(b));
    state.ResumeTiming();
    benchmark::DoNotOptimize(group.all_reduce(std::move(partial)));
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * rows * cols *
                          static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_AllReduceInProcess<float>)->Arg(1)->Arg(512)->UseRealTime();
BENCHMARK(BM_AllReduceInProcess<bf16>)->Arg(1)->Arg(512)->UseRealTime();

std::filesystem::path legacy() {
  return std::filesystem::path(TESSERA_SOURCE_DIR) / "tests" / "fixtures" / "qwen2_5_vl" / "legacy";
}

template <class P>
void BM_PlacedDecodeStep(benchmark::State& state) {
  const auto model = models::Qwen2_5_VL<P, float>::load(legacy());
  models::qwen2_5_vl::Prompt prompt;
  prompt.ids = {1044, 941, 198, 539, 325, 256, 972, 829, 13, 1045};
  const std::int64_t capacity = 4096;
  auto cache = model.new_cache(capacity);
  (void)model.forward(prompt, cache);
  std::int64_t id = 42;
  for (auto _ : state) {
    if (cache.length() + 1 > capacity) {
      state.PauseTiming();
      cache = model.new_cache(capacity);
      (void)model.forward(prompt, cache);
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(model.forward(std::span<const std::int64_t>(&id, 1), cache));
  }
}
BENCHMARK(BM_PlacedDecodeStep<Single<Cpu<0>>>)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_PlacedDecodeStep<Pipeline<Cpu<0>, Cpu<1>>>)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_PlacedDecodeStep<TensorParallel<Cpu<0>, Cpu<1>>>)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
