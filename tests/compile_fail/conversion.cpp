// Compile-fail cases: no tensor or view changes device implicitly; the only
// bridge is tessera::to<D>(t). Also: a read-only tensor gives no writable view.
//
// Format: see device_mismatch.cpp (one `TESSERA_CASE_<name>` block per case,
// `// expect:` regexes, TESSERA_EXPECT_FAIL selects the misuse).
#include <utility>

#include <tessera/tessera.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_init_from_other_device)
// §2.6 #1: the result of a move to one device kept in a variable of another.
// expect: (use of deleted function|invokes a deleted function)
// expect-gcc: Tensor<D, T>::Tensor\(tessera::Tensor<D2, U>&&\) .with D2 = tessera::Cpu<0>. U = float. D = tessera::Cpu<1>
// expect-clang: from .Tensor<Cpu<0>, .*. to .Tensor<Cpu<1>, 
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
// expect: (use of deleted function|selected deleted operator)
// expect: operator=
// expect-gcc: operator=\(const tessera::Tensor<D2, U>&\) .with D2 = tessera::Cuda<0>. U = float. D = tessera::Cuda<1>
// expect-clang: candidate function .with D2 = tessera::Cuda<0>, U = float. has been explicitly deleted
void f(Tensor<Cuda<1>, float>& x, const Tensor<Cuda<0>, float>& y) {
#ifdef TESSERA_EXPECT_FAIL
  x = y;
#else
  x = to<Cuda<1>>(y);
#endif
}

#elif defined(TESSERA_CASE_move_assign_from_other_device)
// Moving a tensor does not move its data to another device.
// expect: (use of deleted function|selected deleted operator)
// expect: operator=
// expect-gcc: operator=\(tessera::Tensor<D2, U>&&\) .with D2 = tessera::Cuda<0>. U = float. D = tessera::Cpu<0>
// expect-clang: candidate function .with D2 = tessera::Cuda<0>, U = float. has been explicitly deleted
void f(Tensor<Host, float>& x, Tensor<Cuda<0>, float>& y) {
#ifdef TESSERA_EXPECT_FAIL
  x = std::move(y);
#else
  x = to<Host>(y);
#endif
}

#elif defined(TESSERA_CASE_view_of_other_device)
// A view does not move data either: a view of Cpu<0> is not a view of Cpu<1>.
// expect: (use of deleted function|invokes a deleted function)
// expect-gcc: TensorView<D, T>::TensorView\(const tessera::TensorView<D2, U>&\) .with D2 = tessera::Cpu<0>. U = const float. D = tessera::Cpu<1>
// expect-clang: from .TensorView<Cpu<0>, .*. to .TensorView<Cpu<1>, 
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
void f(const Tensor<Cpu<0>, float>& t) {
#ifdef TESSERA_EXPECT_FAIL
  TensorView<Cpu<0>, float> v = t;
#else
  TensorView<Cpu<0>, const float> v = t;
#endif
  (void)v;
}

#else
#error "no TESSERA_CASE_<name> selected"
#endif
