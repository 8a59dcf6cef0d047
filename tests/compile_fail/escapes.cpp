// Compile-fail cases: the escape hatches that used to hand device memory to
// host code, or one device's memory to another device's view, with no cast
// in sight. Device memory is reachable only as a DevicePtr<D, T>
// (device_ptr(), whose address a launcher takes with .get()), and a view over
// a pointer is made only by a factory that names its device.
// And the wrong-way hints: where an API wants host memory (the processor's
// pixels, a padded batch's ids) and the value was moved to a GPU, the
// sentence says to keep it on the host.
//
// Format: see device_mismatch.cpp.
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include <tessera/tessera.hpp>
#include <tessera/generate/sampling.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/models/qwen2_5_vl.hpp>

using namespace tessera;

#if defined(TESSERA_CASE_cuda_logits_raw_into_sampler)
// GPU logits handed to the host sampler as a span over device memory.
// expect-gcc: tessera::Tensor<tessera::Cuda<0>, float>. has no member named .raw.
// expect-clang: no member named .raw. in .tessera::Tensor<tessera::Cuda<0>, float>.
// expect-nvcc: class "tessera::Tensor<tessera::Cuda<0>, float>" has no member "raw"
std::int64_t f(generate::Sampler& sampler, const Tensor<Cuda<0>, float>& logits,
               std::span<const std::int64_t> context) {
#ifdef TESSERA_EXPECT_FAIL
  const float* device_address = logits.raw();
  return sampler.next(std::span<const float>(device_address, static_cast<std::size_t>(logits.numel())), context);
#else
  const Tensor<Host, float> on_host = to<Host>(logits);
  return sampler.next(on_host.span(), context);
#endif
}

#elif defined(TESSERA_CASE_cuda_view_raw)
// The same through a view (a slice of the last row).
// expect-gcc: tessera::TensorView<tessera::Cuda<1>, const float>. has no member named .raw.
// expect-clang: no member named .raw. in .tessera::TensorView<tessera::Cuda<1>, const float>.
// expect-nvcc: class "tessera::TensorView<tessera::Cuda<1>, const float>" has no member "raw"
float f(const Tensor<Cuda<1>, float>& logits) {
  const auto last = logits.slice(0, logits.dim(0) - 1, logits.dim(0));
#ifdef TESSERA_EXPECT_FAIL
  return last.raw()[0];
#else
  return to<Host>(last).span()[0];
#endif
}

#elif defined(TESSERA_CASE_braced_pointer_view_of_other_device)
// `{cuda0_tensor's address, shape}` as an argument taking another GPU's view.
// expect: a view is made from a pointer only by a factory that names its device
// expect: over_device_memory\(t.device_ptr\(\), shape\)
void on_gpu1(TensorView<Cuda<1>, const float> x);
void f(const Tensor<Cuda<0>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  on_gpu1({x.device_ptr().get(), x.shape()});
#else
  const Tensor<Cuda<1>, float> x1 = to<Cuda<1>>(x);
  on_gpu1(TensorView<Cuda<1>, const float>::over_device_memory(x1.device_ptr(), x1.shape()));
#endif
}

#elif defined(TESSERA_CASE_host_view_of_device_address)
// A host view built over a GPU address.
// expect: a view is made from a pointer only by a factory that names its device
// expect: over_host_memory\(host_pointer, shape\)
float f(Tensor<Cuda<0>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  const TensorView<Host, float> v(x.device_ptr().get(), x.shape());
  return v.at(0);
#else
  const Tensor<Host, float> h = to<Host>(x);
  return h.view().at(0);
#endif
}

#elif defined(TESSERA_CASE_host_view_of_other_slot)
// CPU slot 1's memory viewed as slot 0's (the ledgers and placement would
// account it to the wrong slot).
// expect: a view is made from a pointer only by a factory that names its device
void on_slot0(TensorView<Cpu<0>, float> x);
void f(Tensor<Cpu<1>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  on_slot0({x.raw(), x.shape()});
#else
  Tensor<Cpu<0>, float> x0 = to<Cpu<0>>(x);
  on_slot0(x0.view());
#endif
}

#elif defined(TESSERA_CASE_device_ptr_of_other_device)
// The named factory still checks the pointer's device.
// expect: a tensor never changes device implicitly. move it with tessera::to<Device>\(t\)
// expect-gcc: same_device<tessera::Cuda<1>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cuda<1>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::Cuda<1>, From=tessera::Cuda<0>
void f(Tensor<Cuda<0>, float>& x) {
#ifdef TESSERA_EXPECT_FAIL
  const auto v = TensorView<Cuda<1>, float>::over_device_memory(x.device_ptr(), x.shape());
#else
  const auto v = TensorView<Cuda<0>, float>::over_device_memory(x.device_ptr(), x.shape());
#endif
  (void)v;
}

#elif defined(TESSERA_CASE_processor_pixels_moved_to_gpu)
// The processor's output is host data; the model moves it to the tower's
// device itself. The hint points back to the host, not to another to<>.
// expect: this one is wanted in host memory. keep it on the host
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cpu<0>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::(Cpu<0>|Host), From=tessera::Cuda<0>
void f(models::qwen2_5_vl::ProcessedImage& image) {
#ifdef TESSERA_EXPECT_FAIL
  image.pixel_values = to<Cuda<0>>(image.pixel_values);
#else
  const Tensor<Cuda<0>, float> on_gpu = to<Cuda<0>>(image.pixel_values);  // a copy; the image stays host data
  (void)on_gpu;
#endif
}

#elif defined(TESSERA_CASE_padded_batch_ids_on_gpu)
// transformers habit: input_ids.to("cuda") before calling the model.
// tessera's padded batch takes ids and mask on the host.
// expect: this one is wanted in host memory. keep it on the host
// expect-gcc: same_device<tessera::Cpu<0>, ?tessera::Cuda<0> ?>
// expect-clang: same_device<tessera::Cpu<0>, tessera::Cuda<0>>
// expect-nvcc: To=tessera::(Cpu<0>|Host), From=tessera::Cuda<0>
using Model = models::Qwen2<Single<Cuda<0>>>;
void f(const Model& model, const Tensor<Host, std::int64_t>& ids, const Tensor<Host, std::int64_t>& mask,
       std::span<Model::Cache* const> caches) {
#ifdef TESSERA_EXPECT_FAIL
  const Tensor<Cuda<0>, std::int64_t> ids_on_gpu = to<Cuda<0>>(ids);
  (void)model.forward_padded(ids_on_gpu, mask, caches);
#else
  (void)model.forward_padded(ids, mask, caches);
#endif
}

#elif defined(TESSERA_CASE_NONE)
// Headers only: the batched run of every twin includes this file first.
#else
#error "no TESSERA_CASE_<name> selected"
#endif
