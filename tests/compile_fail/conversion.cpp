// Compile-fail cases: no tensor or view changes device implicitly; the only
// bridge is tessera::to<D>(t). The conversions are declared, not deleted, so
// each of these is tessera's sentence naming both devices. Also: a read-only tensor gives no writable view.
//
// Format: see device_mismatch.cpp (one `TESSERA_CASE_<name>` block per case,
// `// expect:` regexes, TESSERA_EXPECT_FAIL selects the misuse).
#include <utility>

#include <tessera/tessera.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_init_from_other_device)
// §2.6 #1: the result of a move to one device kept in a variable of another.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: Tensor<D, T>::Tensor\(tessera::Tensor<D2, U>&&\) .with D2 = tessera::Cpu<0>. U = float. D = tessera::Cpu<1>
// expect-gcc: same_device<tessera::Cpu<1>, ?tessera::Cpu<0> ?>
// expect-clang: same_device<tessera::Cpu<1>, tessera::Cpu<0>>
// expect-nvcc: To=tessera::Cpu<1>, From=tessera::(Cpu<0>|Host)
void f(const Tensor<Host, float>& h) {
#ifdef TESSERA_EXPECT_FAIL
  Tensor<Cpu<1>, float> x = to<Cpu<0>>(h);
#else
  Tensor<Cpu<1>, float> x = to<Cpu<1>>(h);
#endif
  (void)x;
}

#elif defined(TESSERA_CASE_assign_from_other_device)
// Re-using a variable for a tensor of another device.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect: operator=
// expect-gcc: operator=\(const tessera::Tensor<D2, U>&\) .with D2 = tessera::Cuda<0>. U = float. D = tessera::Cuda<1>
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::Cuda<1>, From=tessera::Cuda<0>
void f(Tensor<Cuda<1>, float>& x, const Tensor<Cuda<0>, float>& y) {
#ifdef TESSERA_EXPECT_FAIL
  x = y;
#else
  x = to<Cuda<1>>(y);
#endif
}

#elif defined(TESSERA_CASE_move_assign_from_other_device)
// Moving a tensor does not move its data to another device.
// A GPU tensor assigned to a host variable: the hint points back to the host.
// expect: a tensor never changes device implicitly, and this one is wanted in host memory
// expect: operator=
// expect-gcc: operator=\(tessera::Tensor<D2, U>&&\) .with D2 = tessera::Cuda<0>. U = float. D = tessera::Cpu<0>
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cpu<0>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::(Cpu<0>|Host), From=tessera::Cuda<0>
void f(Tensor<Host, float>& x, Tensor<Cuda<0>, float>& y) {
#ifdef TESSERA_EXPECT_FAIL
  x = std::move(y);
#else
  x = to<Host>(y);
#endif
}

#elif defined(TESSERA_CASE_view_of_other_device)
// A view does not move data either: a view of Cpu<0> is not a view of Cpu<1>.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: TensorView<D, T>::TensorView\(const tessera::TensorView<D2, U>&\) .with D2 = tessera::Cpu<0>. U = const float. D = tessera::Cpu<1>
// expect-clang: same_device<tessera::Cpu<1>, tessera::Cpu<0>>
// expect-nvcc: To=tessera::Cpu<1>, From=tessera::(Cpu<0>|Host)
void f(const Tensor<Cpu<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  TensorView<Cpu<1>, const float> v = t.view();
#else
  TensorView<Cpu<0>, const float> v = t.view();
#endif
  (void)v;
}

#elif defined(TESSERA_CASE_mutable_view_of_const_tensor)
// A read-only tensor converts only to a read-only view.
// expect-gcc: conversion from .const tessera::Tensor<tessera::Cpu<0>, float>. to non-scalar type .tessera::TensorView<tessera::Cpu<0>, float>. requested
// expect-clang: no viable conversion from .const Tensor<Cpu<0>, float>. to .TensorView<Cpu<0>, float>.
// expect-nvcc: no suitable user-defined conversion from "const tessera::Tensor<tessera::(Cpu<0>|Host), float>".* to "tessera::TensorView<tessera::(Cpu<0>|Host), float>"
void f(const Tensor<Cpu<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  TensorView<Cpu<0>, float> v = t;
#else
  TensorView<Cpu<0>, const float> v = t;
#endif
  (void)v;
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
