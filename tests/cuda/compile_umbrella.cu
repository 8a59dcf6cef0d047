// Compiled by nvcc: the umbrella header and every op header must build as
// CUDA C++ with warnings as errors. Running it checks the host side only.
#include <tessera/tessera.hpp>

#include <cstdio>

__global__ void touch(tessera::bf16* p) { p[threadIdx.x].bits = 0; }

int main() {
  tessera::Tensor<tessera::Host, float> t = tessera::Tensor<tessera::Host, float>::zeros({2, 3});
  std::printf("tessera under nvcc: host tensor of %lld elements\n", static_cast<long long>(t.numel()));
  (void)&touch;
  return t.numel() == 6 ? 0 : 1;
}
