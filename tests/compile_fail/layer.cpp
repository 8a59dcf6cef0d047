// Compile-fail cases: a layer lives on one device (its parameters are
// Tensor<D, T>) and holds no placement logic, so an input or a parameter from
// another device is a compile error naming both devices.
//
// Format: see device_mismatch.cpp.
#include <optional>
#include <utility>

#include <tessera/tessera.hpp>
#include <tessera/nn/linear.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_linear_input_other_device)
// §2.6 #9: vision features from the resampler's device fed to a projection
// layer on another device (MiniCPM-V's cuda:0 vs cuda:1).
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cuda<0>, ?tessera::Cuda<1> ?>
// expect-clang: same_device<tessera::Cuda<0>, ?tessera::Cuda<1> ?>
// expect-nvcc: A=tessera::Cuda<0>, B=tessera::Cuda<1>
void f(const nn::Linear<Cuda<0>, bf16>& proj, const Tensor<Cuda<1>, bf16>& vision_features) {
#ifdef TESSERA_EXPECT_FAIL
  auto y = proj.forward(vision_features);
#else
  auto y = proj.forward(to<Cuda<0>>(vision_features));
#endif
  (void)y;
}

#elif defined(TESSERA_CASE_linear_view_other_slot)
// The same with a view: a slice of a tensor on slot 1 into a layer on slot 0.
// expect: operands live on different devices
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-clang: same_device<tessera::Cpu<0>, ?tessera::Cpu<1> ?>
// expect-nvcc: A=tessera::(Cpu<0>|Host), B=tessera::Cpu<1>
void f(const nn::Linear<Cpu<0>, float>& layer, const Tensor<Cpu<1>, float>& hidden) {
#ifdef TESSERA_EXPECT_FAIL
  auto y = layer.forward(hidden.slice(0, 0, 1));
#else
  auto y = layer.forward(to<Cpu<0>>(hidden.slice(0, 0, 1)));
#endif
  (void)y;
}

#elif defined(TESSERA_CASE_linear_weight_on_host)
// Weights read from a checkpoint on the host and handed to a GPU layer
// without to<>: the parameter itself would change device.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: Tensor<D, T>::Tensor\(tessera::Tensor<D2, U>&&\) .with D2 = tessera::Cpu<0>. U = tessera::bf16. D = tessera::Cuda<0>
// expect-clang: same_device<tessera::Cuda<0>, tessera::Cpu<0>>
// expect-nvcc: To=tessera::Cuda<0>, From=tessera::(Cpu<0>|Host)
nn::Linear<Cuda<0>, bf16> f(Tensor<Host, bf16> weight) {
#ifdef TESSERA_EXPECT_FAIL
  return nn::Linear<Cuda<0>, bf16>(std::move(weight));
#else
  return nn::Linear<Cuda<0>, bf16>(to<Cuda<0>>(weight));
#endif
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
