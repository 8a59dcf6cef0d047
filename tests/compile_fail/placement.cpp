// Compile-fail cases: the device-map failures catalogued in
// reference/placement-semantics.md §2.6, one per root cause a type can
// express, each as the call tessera would make with the devices mixed (must
// not compile) and its corrected twin (must compile); then the split states
// of tensor parallelism (placement/split.hpp, nn/parallel_linear.hpp): a
// Partial value read or used before its all_reduce, a Sharded value where a
// Replicated one is needed, a value reduced by another group's communicator.
//
// (A pipeline stage's output fed to the next stage's layer without to<>,
// §2.6 #1 across stages, is layer.cpp's linear_input_other_device and
// linear_view_other_slot and device_mismatch.cpp's add_two_cpu_slots; it is
// not repeated here.)
//
// Format: see device_mismatch.cpp.
#include <cstdint>
#include <span>
#include <utility>

#include <tessera/tessera.hpp>
#include <tessera/comm/group.hpp>
#include <tessera/generate/sampling.hpp>
#include <tessera/models/internvl2_vision.hpp>
#include <tessera/models/minicpm_v.hpp>
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/nn/parallel_linear.hpp>
#include <tessera/placement/pinned.hpp>
#include <tessera/ops/rope.hpp>
#include <tessera/placement/split.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_placement_mrope_tables_from_other_device_positions)
// §2.6 #4 (transformers PR #37597: get_rope_index's positions on the CPU,
// `cpu and cuda:0 ... wrapper_CUDA_cat`) and #5 (transformers#35505: the
// rotary inv_freq left on the CPU, `cpu and cuda:0 ... mat2 in bmm`): the
// M-RoPE tables are built where the position ids are (get_rope_index makes
// them on the host), then applied to q on the GPU.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cuda<1>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cuda<1>, bf16>& q, const Tensor<Host, std::int64_t>& positions /* [3, S] */,
       std::span<const std::int64_t> mrope_section) {
#ifdef TESSERA_EXPECT_FAIL
  const auto tables = ops::mrope_tables(positions, 128, 1e6, mrope_section);
#else
  const auto tables = ops::mrope_tables(to<Cuda<1>>(positions), 128, 1e6, mrope_section);
#endif
  auto q_embed = ops::apply_rope(q, tables.cos, tables.sin);
  (void)q_embed;
}

#elif defined(TESSERA_CASE_placement_rope_deltas_and_cache_position_on_two_devices)
// §2.6 #3 (QwenLM/Qwen3-VL#765, hiyouga/LlamaFactory#6910): in decode,
// `position = cache_position + rope_deltas` with rope_deltas on the device
// get_rope_index ran on (cuda:0) and cache_position on another (cuda:1).
// The proposed fix is the twin: rope_deltas.to(cache_position.device).
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-nvcc: A=tessera::Cuda<1>, B=tessera::Cuda<0>
void f(const Tensor<Cuda<1>, std::int64_t>& cache_position, const Tensor<Cuda<0>, std::int64_t>& rope_deltas) {
#ifdef TESSERA_EXPECT_FAIL
  auto position = ops::add(cache_position, rope_deltas);
#else
  auto position = ops::add(cache_position, to<Cuda<1>>(rope_deltas));
#endif
  (void)position;
}

#elif defined(TESSERA_CASE_placement_vision_features_into_other_device_embeddings)
// §2.6 #9 (OpenBMB/MiniCPM-V#100, #424: scatter_ of the resampler's output
// on cuda:0 into embed_tokens' output on cuda:1, "argument src"), #2
// (QwenLM/Qwen3-VL#234: masked_scatter_ cuda:3 vs cuda:0) and #8
// (OpenGVLab/InternVL#118: vit_embeds written into input_embeds[selected]
// without .cuda()). Image and video features take the same call (with
// config.tokens.image / config.tokens.video as the placeholder), so one
// case covers both.
// expect: image/video features and the text embeddings they are scattered into live on different devices
// expect: move the features with tessera::to<Device>\(features\) first
void f(Tensor<Cuda<1>, bf16>& embeddings, std::span<const std::int64_t> ids, std::int64_t video_placeholder,
       const Tensor<Cuda<0>, bf16>& vision_tower_output) {
#ifdef TESSERA_EXPECT_FAIL
  models::qwen2_5_vl::scatter_features(embeddings, ids, video_placeholder, vision_tower_output);
#else
  models::qwen2_5_vl::scatter_features(embeddings, ids, video_placeholder, to<Cuda<1>>(vision_tower_output));
#endif
}

#elif defined(TESSERA_CASE_placement_mask_finished_tokens_and_mask_on_two_devices)
// §2.6 #6 (OpenGVLab/InternVL#587) and #7 (OpenGVLab/InternVL PR #132): in
// generate(), next_tokens (sampled from lm_head's logits, cuda:4) times
// unfinished_sequences (made next to input_ids, cuda:0).
// expect: the sampled next tokens and the unfinished-sequences mask live on different devices
// expect-gcc: same_device<tessera::Cuda<4>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<4>, tessera::Cuda<0> ?>
Tensor<Cuda<4>, std::int64_t> f(const Tensor<Cuda<4>, std::int64_t>& next_tokens,
                                const Tensor<Cuda<0>, std::int64_t>& unfinished_sequences, std::int64_t pad_token_id) {
#ifdef TESSERA_EXPECT_FAIL
  return generate::mask_finished(next_tokens, unfinished_sequences, pad_token_id);
#else
  return generate::mask_finished(next_tokens, to<Cuda<4>>(unfinished_sequences), pad_token_id);
#endif
}

#elif defined(TESSERA_CASE_placement_second_per_grid_ts_on_host)
// §2.6 #4 (EvolvingLMMs-Lab/lmms-eval#643: only video benchmarks fail,
// cuda:4 vs cpu; QwenLM/Qwen3-VL#1131 moves second_per_grid_ts to the model
// device by hand): the processor makes second_per_grid_ts on the host, and
// the video's temporal positions t_index * second_per_grid_t *
// tokens_per_second are computed next to a grid tensor on the GPU.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cuda<0>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cuda<0>, std::int64_t>& t_index /* [T] */,
       const Tensor<Host, float>& second_per_grid_ts /* [1], from the processor */, float tokens_per_second) {
  const Tensor<Cuda<0>, float> t = ops::cast<float>(t_index);
#ifdef TESSERA_EXPECT_FAIL
  auto time = ops::scale(ops::mul(t, second_per_grid_ts), tokens_per_second);
#else
  auto time = ops::scale(ops::mul(t, to<Cuda<0>>(second_per_grid_ts)), tokens_per_second);
#endif
  (void)time;
}

#elif defined(TESSERA_CASE_placement_partial_read_without_all_reduce)
// A row-parallel layer's per-device summands read as if they were the
// value: the forgotten all_reduce of Megatron-style tensor parallelism.
// expect: a Partial<...> value holds per-device summands and cannot be read
// expect: reduce it with group.all_reduce\(std::move\(value\)\) first
Tensor<Cpu<0>, float> f(const comm::Group<Cpu<0>, Cpu<1>>& group, Distributed<Partial<Cpu<0>, Cpu<1>>, float> p) {
#ifdef TESSERA_EXPECT_FAIL
  (void)group;
  return to<Cpu<0>>(p.part<0>());
#else
  const auto reduced = group.all_reduce(std::move(p));
  return to<Cpu<0>>(reduced.part<0>());
#endif
}

#elif defined(TESSERA_CASE_placement_partial_into_column_parallel)
// The same forgotten reduction one layer later: the summands of
// attention's o_proj fed straight into the MLP's column-parallel up_proj.
// expect: ColumnParallelLinear needs a Replicated input; a Partial value must go through group.all_reduce first
auto f(const comm::Group<Cpu<0>, Cpu<1>>& group, const nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>& up_proj,
       Distributed<Partial<Cpu<0>, Cpu<1>>, float> attn_out) {
#ifdef TESSERA_EXPECT_FAIL
  (void)group;
  return up_proj.forward(attn_out);
#else
  return up_proj.forward(group.all_reduce(std::move(attn_out)));
#endif
}

#elif defined(TESSERA_CASE_placement_sharded_into_column_parallel)
// Two column-parallel layers in a row: the first one's output is split
// along the features, so the second would see only a slice of its input.
// The twin is the Megatron pair: RowParallelLinear, then all_reduce.
// expect: ColumnParallelLinear needs a Replicated input; got Sharded
// expect: pass it through a RowParallelLinear and group.all_reduce first
auto f(const comm::Group<Cpu<0>, Cpu<1>>& group, const nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>& up_proj,
       const nn::RowParallelLinear<float, Cpu<0>, Cpu<1>>& down_proj,
       const nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>& next_up_proj, const Tensor<Cpu<0>, float>& x) {
  const auto h = up_proj.forward(group.replicate(x));
#ifdef TESSERA_EXPECT_FAIL
  (void)down_proj;
  return next_up_proj.forward(h);
#else
  return next_up_proj.forward(group.all_reduce(down_proj.forward(h)));
#endif
}

#elif defined(TESSERA_CASE_placement_replicated_into_row_parallel)
// A row-parallel layer fed the whole (Replicated) activation instead of a
// column-parallel layer's shards: every rank would multiply the full input
// by its slice of the columns.
// expect: RowParallelLinear takes a Sharded<1, ...> input \(the output of a ColumnParallelLinear\); got Replicated
auto f(const comm::Group<Cpu<0>, Cpu<1>>& group, const nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>& up_proj,
       const nn::RowParallelLinear<float, Cpu<0>, Cpu<1>>& down_proj, const Tensor<Cpu<0>, float>& x) {
  const auto replicated = group.replicate(x);
#ifdef TESSERA_EXPECT_FAIL
  (void)up_proj;
  return down_proj.forward(replicated);
#else
  return down_proj.forward(up_proj.forward(replicated));
#endif
}

#elif defined(TESSERA_CASE_placement_all_reduce_with_other_groups_communicator)
// Summands living on one tensor-parallel group's devices (stage 1 of a
// pipeline: Cpu<2>, Cpu<3>) reduced with stage 0's communicator (Cpu<0>,
// Cpu<1>): the collective would run over the wrong ranks.
// expect: comm::Group::all_reduce takes a Distributed<Partial<...>> over this group's own devices
// expect: use the communicator of the group that produced the summands
auto f(const comm::Group<Cpu<0>, Cpu<1>>& stage0, const comm::Group<Cpu<2>, Cpu<3>>& stage1,
       Distributed<Partial<Cpu<2>, Cpu<3>>, float> p) {
#ifdef TESSERA_EXPECT_FAIL
  (void)stage1;
  return stage0.all_reduce(std::move(p));
#else
  (void)stage0;
  return stage1.all_reduce(std::move(p));
#endif
}

#elif defined(TESSERA_CASE_placement_scatter_rows_other_device)
// The generic masked scatter every VLM family calls (models/scatter.hpp):
// InternVL's <IMG_CONTEXT> rows and MiniCPM-V's <unk> rows with the vision
// stack on one GPU and the embeddings on another (§2.6 #8, #9).
// expect: image/video features and the text embeddings they are scattered into live on different devices
// expect: move the features with tessera::to<Device>\(features\) first
void f(Tensor<Cuda<0>, bf16>& embeddings, std::span<const std::int64_t> ids, const Tensor<Cuda<2>, bf16>& features) {
#ifdef TESSERA_EXPECT_FAIL
  models::scatter_rows(embeddings, ids, 92546, features);
#else
  models::scatter_rows(embeddings, ids, 92546, to<Cuda<0>>(features));
#endif
}

#elif defined(TESSERA_CASE_placement_pinned_module_returns_other_device)
// A pinned vision stack must hand back its output where it ran; moving it
// is the caller's explicit to<> afterwards (or scatter_rows's), never a
// silent hop inside run().
// expect: a pinned module's run\(\) must return a tensor on the module's own device
template <class D>
struct Stack {
  Tensor<D, float> forward() const { return Tensor<D, float>(Shape{1}); }
};
void f(const placement::Pinned<Pipeline<Cpu<0>, Cpu<1>>, Stack>& pinned) {
#ifdef TESSERA_EXPECT_FAIL
  (void)pinned.run<float>([&]<Device D>(const Stack<D>& s) { return to<Cpu<1>>(s.forward()); });
#else
  (void)pinned.run<float>([&]<Device D>(const Stack<D>& s) { return s.forward(); });
#endif
}

#elif defined(TESSERA_CASE_placement_minicpm_v_patches_into_encoder_on_other_device)
// §2.6 #9 one step earlier: the processor's patches moved to one GPU and the
// pinned SigLIP encoder + resampler on another.
// expect: the MiniCPM-V vision encoder and its input patches live on different devices
// expect: tessera::to<Device>\(patches\)
void f(const models::minicpm_v::VisionEncoder<Cuda<0>, bf16>& encoder, const Tensor<Cuda<1>, bf16>& patches,
       std::span<const models::minicpm_v::TgtSize> tgt_sizes) {
#ifdef TESSERA_EXPECT_FAIL
  (void)encoder.forward(patches, tgt_sizes);
#else
  (void)encoder.forward(to<Cuda<0>>(patches), tgt_sizes);
#endif
}

#elif defined(TESSERA_CASE_placement_internvl2_tiles_into_encoder_on_other_device)
// §2.6 #8 one step earlier (OpenGVLab/InternVL#118, #229): the processor's
// tiles moved to the language model's first GPU while InternViT + mlp1 sit
// on another; PR #132's "extract_feature return tensor in other device".
// expect: the InternVL2 vision encoder and its input pixels live on different devices
// expect: tessera::to<Device>\(pixels\)
void f(const models::internvl2::VisionEncoder<Cuda<0>, bf16>& encoder, const Tensor<Cuda<3>, bf16>& tiles) {
#ifdef TESSERA_EXPECT_FAIL
  (void)encoder.forward(tiles);
#else
  (void)encoder.forward(to<Cuda<0>>(tiles));
#endif
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
