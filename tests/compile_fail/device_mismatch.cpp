// Compile-fail cases: an op whose tensor arguments live on different devices.
// Each maps to a root cause in reference/placement-semantics.md §2.6.
//
// One case per `TESSERA_CASE_<name>` block. With TESSERA_EXPECT_FAIL defined
// the block is the misuse, which must not compile and whose diagnostics must
// match every `// expect:` regex of the block, plus `// expect-gcc:` ones under
// GCC and `// expect-clang:` ones under Clang (CMake regex syntax, matched
// against the compiler's whole output; `.` stands for quote characters, which
// differ between compilers and locales). Otherwise it is the correct twin,
// which must compile. See tests/compile_fail/CMakeLists.txt.
#include <cstdint>

#include <tessera/tessera.hpp>
#include <tessera/ops/elementwise.hpp>
#include <tessera/ops/reduce.hpp>
#include <tessera/ops/shape.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_add_two_cpu_slots)
// §2.6 #1: input_ids on one device, the embedding output on another.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-nvcc: A=tessera::(Cpu<0>|Host), B=tessera::Cpu<1>
void f(const Tensor<Cpu<0>, float>& a, const Tensor<Cpu<1>, float>& b) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::add(a, b);
#else
  auto c = ops::add(a, to<Cpu<0>>(b));
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_add_host_and_cuda)
// §2.6 #5 and the vLLM/SGLang Host-vs-Device reports: inv_freq or position
// ids left on the host meet a tensor on the GPU.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cuda<0>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cuda<0>, float>& hidden, const Tensor<Host, float>& inv_freq) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::mul(hidden, inv_freq);
#else
  auto c = ops::mul(hidden, to<Cuda<0>>(inv_freq));
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_mul_two_cuda_devices)
// §2.6 #6: next_tokens on the lm_head's GPU times unfinished_sequences on GPU 0.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-nvcc: A=tessera::Cuda<1>, B=tessera::Cuda<0>
void f(const Tensor<Cuda<1>, float>& next_tokens, const Tensor<Cuda<0>, float>& unfinished) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::mul(next_tokens, unfinished);
#else
  auto c = ops::mul(next_tokens, to<Cuda<1>>(unfinished));
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_residual_add_other_device)
// A pipeline stage boundary: the residual stayed on the previous stage.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cpu<1>, B=tessera::(Cpu<0>|Host)
void f(Tensor<Cpu<1>, float>& hidden, const Tensor<Cpu<0>, float>& residual) {
#ifdef TESSERA_EXPECT_FAIL
  ops::residual_add(hidden, residual);
#else
  ops::residual_add(hidden, to<Cpu<1>>(residual));
#endif
}

#elif defined(TESSERA_CASE_cast_result_other_device)
// §2.6 #3: rope_deltas computed (and cast) on one device meet cache_position
// on another. A cast keeps the device; it does not move anything.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-nvcc: A=tessera::(Cpu<0>|Host), B=tessera::Cpu<1>
void f(const Tensor<Cpu<0>, bf16>& rope_deltas, const Tensor<Cpu<1>, float>& cache_position) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::add(ops::cast<float>(rope_deltas), cache_position);
#else
  auto c = ops::add(to<Cpu<1>>(ops::cast<float>(rope_deltas)), cache_position);
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_moved_to_wrong_slot)
// §2.6 #2 / #9: a tensor moved with to<> to the wrong device, then combined
// with a view (slice) of a tensor on the intended one.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cpu<1>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cpu<2>, float>& vision_embeds, const Tensor<Cpu<0>, float>& text_embeds) {
  TensorView<Cpu<0>, const float> rows = text_embeds.slice(0, 0, 4);
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::add(to<Cpu<1>>(vision_embeds), rows);
#else
  auto c = ops::add(to<Cpu<0>>(vision_embeds), rows);
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_add_different_dtypes)
// Same device, different element types: the dtype gate, not the device gate.
// expect: operands have different element types. convert one with tessera::ops::cast<T>
// expect-gcc: is_same_v<float, tessera::bf16>
// expect-clang: is_same_v<float, tessera::bf16>
// expect-nvcc: A=float, B=tessera::bf16
void f(const Tensor<Cpu<0>, float>& a, const Tensor<Cpu<0>, bf16>& b) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::add(a, b);
#else
  auto c = ops::add(a, ops::cast<float>(b));
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_concat_two_cpu_slots)
// §2.6 #2: vision embeddings on one device spliced into the text embeddings
// on another (the variadic concat gates its operands like every op).
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-nvcc: A=tessera::(Cpu<0>|Host), B=tessera::Cpu<1>
void f(const Tensor<Cpu<0>, float>& text_embeds, const Tensor<Cpu<1>, float>& vision_embeds) {
#ifdef TESSERA_EXPECT_FAIL
  auto c = ops::concat(0, text_embeds, vision_embeds);
#else
  auto c = ops::concat(0, text_embeds, to<Cpu<0>>(vision_embeds));
#endif
  (void)c;
}

#elif defined(TESSERA_CASE_topk_on_integers)
// Top-k sampling over token ids instead of logits: selections need a
// floating-point tensor, said in one static_assert.
// expect: ops::argmax / ops::topk need a float, bf16 or f16 tensor
void f(const Tensor<Cpu<0>, std::int32_t>& token_ids, const Tensor<Cpu<0>, float>& logits) {
#ifdef TESSERA_EXPECT_FAIL
  (void)logits;
  auto best = ops::topk(token_ids, 4);
#else
  (void)token_ids;
  auto best = ops::topk(logits, 4);
#endif
  (void)best;
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
