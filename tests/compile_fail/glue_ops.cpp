// Compile-fail cases: the glue between layers, where §2.6 of
// reference/placement-semantics.md finds most device-map failures: token ids,
// position ids and rotary tables on another device than the activations.
//
// Format: see device_mismatch.cpp.
#include <cstdint>

#include <tessera/tessera.hpp>
#include <tessera/ops/attention.hpp>
#include <tessera/ops/embedding.hpp>
#include <tessera/ops/rope.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_embedding_ids_on_host)
// §2.6 #1: input_ids from the processor (Host) looked up in an embedding
// table on the GPU.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cuda<0>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cuda<0>, bf16>& embed_tokens, const Tensor<Host, std::int64_t>& input_ids) {
#ifdef TESSERA_EXPECT_FAIL
  auto x = ops::embedding(embed_tokens, input_ids);
#else
  auto x = ops::embedding(embed_tokens, to<Cuda<0>>(input_ids));
#endif
  (void)x;
}

#elif defined(TESSERA_CASE_rope_tables_on_other_device)
// §2.6 #4 / #5: rotary tables built from position ids that stayed on CPU slot 0
// (the role of inv_freq left on the CPU) applied to activations on slot 1.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cpu<1>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cpu<1>, float>& q, const Tensor<Cpu<0>, std::int64_t>& position_ids) {
#ifdef TESSERA_EXPECT_FAIL
  auto tables = ops::rope_tables(position_ids, 64, 1e6);
#else
  auto tables = ops::rope_tables(to<Cpu<1>>(position_ids), 64, 1e6);
#endif
  auto q_embed = ops::apply_rope(q, tables.cos, tables.sin);
  (void)q_embed;
}

#elif defined(TESSERA_CASE_attention_cu_seqlens_on_host)
// Variable-length attention with the cumulative sequence lengths built by
// the processor on the host and never moved next to q, k and v.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cuda<0>, ?tessera::Cpu<0> ?>
// expect-nvcc: A=tessera::Cuda<0>, B=tessera::(Cpu<0>|Host)
void f(const Tensor<Cuda<0>, bf16>& q, const Tensor<Cuda<0>, bf16>& k, const Tensor<Cuda<0>, bf16>& v,
       const Tensor<Host, std::int32_t>& cu_seqlens) {
  const ops::AttentionOptions causal{.mask = ops::MaskKind::Causal};
#ifdef TESSERA_EXPECT_FAIL
  auto out = ops::attention(q, k, v, cu_seqlens, cu_seqlens, causal);
#else
  const auto cu = to<Cuda<0>>(cu_seqlens);
  auto out = ops::attention(q, k, v, cu, cu, causal);
#endif
  (void)out;
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
