// tessera/models/qwen2.hpp — the Qwen2 decoder-only language model (the
// language model inside Qwen2.5-VL, InternVL2-1B and MiniCPM-V 2.6), as
// transformers' Qwen2ForCausalLM computes it. Qwen2 is one family of the
// shared decoder (decoder.hpp, whose header gives the computation): q/k/v
// biases, separate projections, plain RoPE or M-RoPE. The name stays for
// every call site that has used it:
//
//   auto model = models::Qwen2<Single<Cpu<0>>, float>::load("Qwen2-0.5B");
//
// Decoder<P, T>::load reads the family from config.json, so this alias also
// loads a Llama, Phi-3 or InternLM2 checkpoint; say Decoder when you mean any.
#pragma once

#include "decoder.hpp"

namespace tessera::models {

template <DevicePlacement Placement, FloatType T = bf16>
using Qwen2 = Decoder<Placement, T>;

}  // namespace tessera::models
