// What a GPU's compute capability allows, checked without a GPU: the bf16
// start-up refusal on GPUs below 8.0 (core/cuda_arch.hpp) and the decode
// attention plan on a T4's 64 KiB of shared memory per block
// (ops/cuda/attention.cuh, whose planning half is plain C++).
#include <gtest/gtest.h>

#include <tessera/core/cuda_arch.hpp>
#include <tessera/core/dtype.hpp>
#include <tessera/ops/cuda/attention.cuh>

namespace tc = tessera::cuda;

namespace {

tc::GpuInfo gpu(std::string name, int physical, int cc) { return {"Cuda<0>", std::move(name), physical, cc}; }

}  // namespace

TEST(CudaArch, Bf16OnATuringGpuIsOneSentenceNamingTheGpuAndTheChoices) {
  const auto why = tc::dtype_unsupported("bf16", gpu("Tesla T4", 1, 75));
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(*why,
            "Cuda<0> is Tesla T4 (physical GPU 1, sm_75), which has no bf16 tensor cores (they need compute "
            "capability 8.0, sm_80, or newer), so bf16 models do not run on it: use f16 or float32 there");
  EXPECT_TRUE(tc::dtype_unsupported("bf16", gpu("Tesla V100-SXM2-16GB", 0, 70)).has_value());
}

TEST(CudaArch, Bf16RunsFromAmpereOn) {
  for (const int cc : {80, 86, 89, 90, 100, 120}) {
    EXPECT_FALSE(tc::dtype_unsupported("bf16", gpu("gpu", 0, cc)).has_value()) << tc::sm_name(cc);
  }
}

TEST(CudaArch, F16AndFloat32RunEverywhere) {
  for (const int cc : {70, 75, 80, 90}) {
    EXPECT_FALSE(tc::dtype_unsupported("f16", gpu("gpu", 0, cc)).has_value()) << tc::sm_name(cc);
    EXPECT_FALSE(tc::dtype_unsupported("float32", gpu("gpu", 0, cc)).has_value()) << tc::sm_name(cc);
  }
}

namespace {

// One decode step of a 7B-class model: 28 query heads over 4 kv heads of 128.
tc::AttentionShape decode_shape() {
  tc::AttentionShape s;
  s.sq = 1;
  s.skv = 4096;
  s.hq = 28;
  s.hkv = 4;
  s.dh = s.dv = 128;
  s.max_q_len = 1;
  s.max_k_len = 4096;
  return s;
}

}  // namespace

TEST(CudaArch, DecodePlanFitsATuringBlockOf64KiB) {
  constexpr std::size_t kT4 = 64 * 1024;
  const auto plan = tc::attention_decode_plan<tessera::f16>(decode_shape(), 40, kT4);
  ASSERT_TRUE(plan.usable);
  EXPECT_LE(plan.smem_bytes, kT4);
  EXPECT_GE(plan.tile_keys, 4);
}

TEST(CudaArch, DecodePlanKeepsItsTilesWhereTheDeviceAllowsMore) {
  // 0 (unknown) and an H100's 227 KiB both give the 96 KiB plan.
  const auto unknown = tc::attention_decode_plan<tessera::bf16>(decode_shape(), 132, 0);
  const auto h100 = tc::attention_decode_plan<tessera::bf16>(decode_shape(), 132, 227 * 1024);
  ASSERT_TRUE(unknown.usable);
  EXPECT_EQ(h100.tile_keys, unknown.tile_keys);
  EXPECT_EQ(h100.smem_bytes, unknown.smem_bytes);
  EXPECT_GT(unknown.smem_bytes, std::size_t{64 * 1024});
}
