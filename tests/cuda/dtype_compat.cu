// bf16/f16 must be bit-compatible with CUDA's __nv_bfloat16/__half, so device
// buffers written by tessera's host code mean the same to kernels. This test
// compares tessera's round-to-nearest-even conversions with CUDA's own
// intrinsics: on the host (cuda_bf16.h / cuda_fp16.h conversions are
// __host__ __device__), and inside a kernel, where it exits with 77 (reported
// by CTest as skipped) when no GPU exists.
#include <tessera/tessera.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kSkip = 77;

std::uint16_t bits_of(__nv_bfloat16 v) { return static_cast<__nv_bfloat16_raw>(v).x; }
std::uint16_t bits_of(__half v) { return static_cast<__half_raw>(v).x; }

std::vector<float> test_values(std::size_t n) {
  std::mt19937 gen(99);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  std::vector<float> values;
  values.reserve(n);
  while (values.size() < n) {
    const float f = std::bit_cast<float>(any_bits(gen));
    if (!std::isnan(f)) values.push_back(f);
  }
  // Ties and edges: halfway cases, the f16 overflow threshold, subnormals.
  for (float f : {1.00390625f, 1.01171875f, 65504.0f, 65519.0f, 65520.0f, 5.96e-8f, 2.98e-8f, -0.0f}) values.push_back(f);
  return values;
}

int count_host_mismatches(const std::vector<float>& values) {
  int bad = 0;
  for (float f : values) {
    if (tessera::bf16(f).bits != bits_of(__float2bfloat16_rn(f))) ++bad;
    if (tessera::f16(f).bits != bits_of(__float2half_rn(f))) ++bad;
    const auto h = tessera::f16(f);
    __half_raw raw;
    raw.x = h.bits;
    const float back = __half2float(__half(raw));
    if (!(static_cast<float>(h) == back || (std::isnan(back) && std::isnan(static_cast<float>(h))))) ++bad;
  }
  return bad;
}

__global__ void convert_on_device(const float* in, __nv_bfloat16* out_bf16, __half* out_f16, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) {
    out_bf16[i] = __float2bfloat16_rn(in[i]);
    out_f16[i] = __float2half_rn(in[i]);
  }
}

#define CHECK_CUDA(call)                                                                  \
  do {                                                                                    \
    const cudaError_t err_ = (call);                                                      \
    if (err_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(err_));           \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

int count_device_mismatches(const std::vector<float>& values, int& bad) {
  const int n = static_cast<int>(values.size());
  float* d_in = nullptr;
  __nv_bfloat16* d_bf16 = nullptr;
  __half* d_f16 = nullptr;
  CHECK_CUDA(cudaMalloc(&d_in, values.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&d_bf16, values.size() * 2));
  CHECK_CUDA(cudaMalloc(&d_f16, values.size() * 2));
  CHECK_CUDA(cudaMemcpy(d_in, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice));
  convert_on_device<<<(n + 255) / 256, 256>>>(d_in, d_bf16, d_f16, n);
  CHECK_CUDA(cudaGetLastError());
  std::vector<tessera::bf16> got_bf16(values.size());
  std::vector<tessera::f16> got_f16(values.size());
  // Device results land directly in tessera's types: the layouts are the same.
  CHECK_CUDA(cudaMemcpy(got_bf16.data(), d_bf16, values.size() * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_f16.data(), d_f16, values.size() * 2, cudaMemcpyDeviceToHost));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (got_bf16[i].bits != tessera::bf16(values[i]).bits) ++bad;
    if (got_f16[i].bits != tessera::f16(values[i]).bits) ++bad;
  }
  CHECK_CUDA(cudaFree(d_in));
  CHECK_CUDA(cudaFree(d_bf16));
  CHECK_CUDA(cudaFree(d_f16));
  return 0;
}

}  // namespace

// argv[1]: "host" (CUDA's host-side conversions) or "device" (in a kernel).
int main(int argc, char** argv) {
  const bool device_mode = argc > 1 && std::strcmp(argv[1], "device") == 0;
  const auto values = test_values(200000);
  if (!device_mode) {
    const int host_bad = count_host_mismatches(values);
    std::printf("host: %d mismatches against CUDA's conversions over %zu values\n", host_bad, values.size());
    return host_bad == 0 ? 0 : 1;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: device-side comparison skipped\n");
    return kSkip;
  }
  int device_bad = 0;
  if (count_device_mismatches(values, device_bad) != 0) return 1;
  std::printf("device: %d mismatches against kernel conversions over %zu values\n", device_bad, values.size());
  return device_bad == 0 ? 0 : 1;
}
