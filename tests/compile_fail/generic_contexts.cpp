// Compile-fail cases: device mixes met inside generic code, where a deleted
// conversion would print candidate lists and library internals instead of
// tessera's sentence (std::optional, containers, braced lists, function
// arguments), and the device-typed state of models and placements: a cache
// made for another placement, a stage's value used on the next stage, a
// Partial value kept as Replicated. Every sentence names the fix.
//
// Format: see device_mismatch.cpp.
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include <tessera/tessera.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/placement/stage.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_optional_of_other_device)
// A slot for "the logits, once computed" typed for one GPU, given another's.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::Cuda<1>, From=tessera::Cuda<0>
void f(const Tensor<Host, float>& h) {
  std::optional<Tensor<Cuda<1>, float>> logits;
#ifdef TESSERA_EXPECT_FAIL
  logits = to<Cuda<0>>(h);
#else
  logits = to<Cuda<1>>(h);
#endif
}

#elif defined(TESSERA_CASE_vector_emplace_back_other_device)
// Collecting per-layer outputs of a pipeline in one vector typed for stage 0.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, tessera::Cpu<1>>
// expect-nvcc: To=tessera::(Cpu<0>|Host), From=tessera::Cpu<1>
void f(std::vector<Tensor<Cpu<0>, float>>& outputs, Tensor<Cpu<1>, float>&& stage1_output) {
#ifdef TESSERA_EXPECT_FAIL
  outputs.emplace_back(std::move(stage1_output));
#else
  outputs.emplace_back(to<Cpu<0>>(stage1_output));
#endif
}

#elif defined(TESSERA_CASE_vector_push_back_other_device)
// The same through push_back, whose argument converts before the call.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<0>, tessera::Cpu<0>>
// expect-nvcc: To=tessera::Cuda<0>, From=tessera::(Cpu<0>|Host)
void f(std::vector<Tensor<Cuda<0>, float>>& on_gpu, Tensor<Host, float>&& from_host) {
#ifdef TESSERA_EXPECT_FAIL
  on_gpu.push_back(std::move(from_host));
#else
  on_gpu.push_back(to<Cuda<0>>(from_host));
#endif
}

#elif defined(TESSERA_CASE_concat_braced_views_of_two_devices)
// The documented braced form of ops::concat with views of two devices: the
// list cannot be one std::initializer_list, and the sentence names both.
// expect: operands live on different devices. move one explicitly with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, tessera::Cpu<1>>
// expect-nvcc: A=tessera::(Cpu<0>|Host), B=tessera::Cpu<1>
void f(Tensor<Cpu<0>, float>& a, Tensor<Cpu<1>, float>& b) {
#ifdef TESSERA_EXPECT_FAIL
  const auto joined = ops::concat({a.view(), b.view()}, 0);
#else
  Tensor<Cpu<0>, float> b0 = to<Cpu<0>>(b);
  const auto joined = ops::concat({a.view(), b0.view()}, 0);
#endif
  (void)joined;
}

#elif defined(TESSERA_CASE_concat_braced_tensors)
// Tensors (not views) in the braced form: the sentence names both spellings.
// expect: ops::concat's braced form takes views
// expect: ops::concat\(axis, a, b\) for tensors
void f(const Tensor<Host, float>& a, const Tensor<Host, float>& b) {
#ifdef TESSERA_EXPECT_FAIL
  const auto joined = ops::concat({a, b}, 0);
#else
  const auto joined = ops::concat(0, a, b);
#endif
  (void)joined;
}

#elif defined(TESSERA_CASE_function_argument_view_of_other_device)
// A helper written for one device's views, called with another's.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::Cuda<1>, From=tessera::Cuda<0>
float sum_on_gpu1(TensorView<Cuda<1>, const float> x);
void f(const Tensor<Cuda<0>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  (void)sum_on_gpu1(x.view());
#else
  const Tensor<Cuda<1>, float> x1 = to<Cuda<1>>(x);
  (void)sum_on_gpu1(x1.view());
#endif
}

#elif defined(TESSERA_CASE_function_argument_tensor_of_other_device)
// A tensor (not a view) passed where another device's view is taken.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cuda<1>, tessera::Cpu<1>>
// expect-nvcc: To=tessera::Cuda<1>, From=tessera::Cpu<1>
float sum_on_gpu1(const TensorView<Cuda<1>, const float>& x);
void f(const Tensor<Cpu<1>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  (void)sum_on_gpu1(x);
#else
  (void)sum_on_gpu1(to<Cuda<1>>(x));
#endif
}

#elif defined(TESSERA_CASE_kv_cache_of_other_placement)
// A cache made by the pipelined model handed to the single-GPU one: its
// per-layer slabs live on the other model's devices.
// expect: this KV cache was made by a model of another placement or element type
// expect: make the cache with this model's new_cache\(capacity\)
// expect: Pipeline<tessera::Cuda<0>, ?tessera::Cuda<1> ?>
using OneGpu = models::Qwen2<Single<Cuda<0>>>;
using TwoGpus = models::Qwen2<Pipeline<Cuda<0>, Cuda<1>>>;
void f(const OneGpu& model, const TwoGpus& other, std::span<const std::int64_t> ids) {
#ifdef TESSERA_EXPECT_FAIL
  TwoGpus::Cache cache = other.new_cache(64);
#else
  OneGpu::Cache cache = model.new_cache(64);
  (void)other;
#endif
  (void)model.forward(ids, cache);
}

#elif defined(TESSERA_CASE_vlm_cache_of_other_element_type)
// The same for a vision-language model's prompt: a float32 model's cache
// given to the bf16 model on the same GPU.
// expect: this KV cache was made by a model of another placement or element type
// expect: make the cache with this model's new_cache\(capacity\)
using Bf16 = models::Qwen2_5_VL<Single<Cuda<0>>, bf16>;
using Float = models::Qwen2_5_VL<Single<Cuda<0>>, float>;
void f(const Bf16& model, const Float& other, const models::qwen2_5_vl::Prompt& prompt) {
#ifdef TESSERA_EXPECT_FAIL
  Float::Cache cache = other.new_cache(256);
#else
  Bf16::Cache cache = model.new_cache(256);
  (void)other;
#endif
  (void)model.forward(prompt, cache);
}

#elif defined(TESSERA_CASE_stage_value_used_on_next_stage)
// §2.6 #1 across stages in model code: stage 0's activation kept as stage
// 1's value without crossing (the decoder crosses with move_to_stage).
// expect: a Distributed value lives on its group's devices
// expect: placement::move_to_stage<S2>\(value, from_group, to_group\)
// expect-gcc: is_same_v<std::tuple<tessera::Cuda<0> ?>, ?std::tuple<tessera::Cuda<1> ?> ?>
// expect-clang: is_same_v<std::tuple<tessera::Cuda<0>>, std::tuple<tessera::Cuda<1>>>
using Stage0 = Cuda<0>;
using Stage1 = Cuda<1>;
void f(placement::StageValue<Stage0, bf16>&& h, const placement::StageGroup<Stage0>& g0,
       const placement::StageGroup<Stage1>& g1) {
#ifdef TESSERA_EXPECT_FAIL
  placement::StageValue<Stage1, bf16> next = std::move(h);
  (void)g0;
  (void)g1;
#else
  placement::StageValue<Stage1, bf16> next = placement::move_to_stage<Stage1, Stage0, bf16>(h, g0, g1);
#endif
  (void)next;
}

#elif defined(TESSERA_CASE_partial_kept_as_replicated)
// A row-parallel layer's summands stored where the reduced value belongs
// (std::optional, as a layer's output slot would hold it).
// expect: a Partial<...> value becomes Replicated only through group.all_reduce\(std::move\(value\)\)
// expect-gcc: is_same_v<tessera::Partial<tessera::Cuda<0>, ?tessera::Cuda<1> ?>, ?tessera::Replicated<
// expect-clang: is_same_v<tessera::Partial<tessera::Cuda<0>, tessera::Cuda<1>>, tessera::Replicated<
using Group = comm::Group<Cuda<0>, Cuda<1>>;
void f(Distributed<Partial<Cuda<0>, Cuda<1>>, bf16>&& summands, Group& group) {
  std::optional<Distributed<Replicated<Cuda<0>, Cuda<1>>, bf16>> out;
#ifdef TESSERA_EXPECT_FAIL
  out = std::move(summands);
  (void)group;
#else
  out = group.all_reduce(std::move(summands));
#endif
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
