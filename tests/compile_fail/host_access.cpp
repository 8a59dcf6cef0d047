// Compile-fail cases: no host element access on device tensors. data(),
// at() and span() do not exist on Tensor<Cuda<N>> (nor data() and at() on
// TensorView<Cuda<N>>; views have no span() on any device), so misuse is a
// missing member, not a run-time abort. Host construction helpers
// (from, zeros, full) exist only on CPU slots: processor outputs are built on
// the Host and cross to a device with to<>.
//
// Format: see device_mismatch.cpp.
#include <tessera/tessera.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_cuda_tensor_at)
// expect-gcc: tessera::Tensor<tessera::Cuda<0>, float>. has no member named .at.
// expect-clang: no member named .at. in .tessera::Tensor<tessera::Cuda<0>, float>.
// expect-nvcc: class "tessera::Tensor<tessera::Cuda<0>, float>" has no member "at"
float f(const Tensor<Cuda<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  return t.at(0);
#else
  return to<Host>(t).at(0);
#endif
}

#elif defined(TESSERA_CASE_cuda_tensor_data)
// expect-gcc: tessera::Tensor<tessera::Cuda<1>, tessera::bf16>. has no member named .data.
// expect-clang: no member named .data. in .tessera::Tensor<tessera::Cuda<1>>.
// expect-nvcc: class "tessera::Tensor<tessera::Cuda<1>, tessera::bf16>" has no member "data"
const bf16* f(const Tensor<Cuda<1>, bf16>& t, const Tensor<Host, bf16>& host) {
#ifdef TESSERA_EXPECT_FAIL
  (void)host;
  return t.data();
#else
  (void)t;
  return host.data();
#endif
}

#elif defined(TESSERA_CASE_cuda_tensor_span)
// expect-gcc: tessera::Tensor<tessera::Cuda<0>, float>. has no member named .span.
// expect-clang: no member named .span. in .tessera::Tensor<tessera::Cuda<0>, float>.
// expect-nvcc: class "tessera::Tensor<tessera::Cuda<0>, float>" has no member "span"
std::size_t f(Tensor<Cuda<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  return t.span().size();
#else
  return to<Host>(t).span().size();
#endif
}

#elif defined(TESSERA_CASE_cuda_view_at)
// A slice of a device tensor is still on the device.
// expect-gcc: tessera::TensorView<tessera::Cuda<0>, const float>. has no member named .at.
// expect-clang: no member named .at. in .tessera::TensorView<tessera::Cuda<0>, const float>.
// expect-nvcc: class "tessera::TensorView<tessera::Cuda<0>, const float>" has no member "at"
float f(const Tensor<Cuda<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  return t.slice(0, 1, 2).at(0, 0);
#else
  return to<Host>(t.slice(0, 1, 2)).at(0, 0);
#endif
}

#elif defined(TESSERA_CASE_cuda_tensor_from_host_values)
// Host values become a device tensor only through to<>.
// expect-gcc: no matching function for call to
// expect-gcc: constraints not satisfied
// expect-clang: no matching function for call to
// expect-clang: constraints not satisfied
// expect-nvcc: no instance of overloaded function "tessera::Tensor<D, T>::from .with D=tessera::Cuda<0>, T=float."
// expect-nvcc: constraint on candidate function
// expect-gcc: tessera::Tensor<tessera::Cuda<0>, float>::from\(
// expect-gcc: is_cpu_v<D> .with D = tessera::Cuda<0>.. evaluated to .false.
// expect-clang: is_cpu_v<tessera::Cuda<0> ?>. evaluated to false
Tensor<Cuda<0>, float> f() {
#ifdef TESSERA_EXPECT_FAIL
  return Tensor<Cuda<0>, float>::from({1.0f, 2.0f}, {2});
#else
  return to<Cuda<0>>(Tensor<Host, float>::from({1.0f, 2.0f}, {2}));
#endif
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
