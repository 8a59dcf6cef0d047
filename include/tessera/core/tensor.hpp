// tessera/core/tensor.hpp — Tensor<D, T> (owning, contiguous) and
// TensorView<D, T> (non-owning, strided: slices, reshapes, transposes).
//
// The device D is part of the type. There is no conversion between tensors of
// different devices (the converting constructors are deleted, so the compiler
// names both types); the only bridge is tessera::to<D2>(t). Host element
// access (data(), raw(), at(), and span() on Tensor) exists only on CPU
// devices: on a Cuda<N> tensor or view it is a missing member, not a run-time
// abort. Device memory is reachable only as a DevicePtr<D, T> (device_ptr()),
// whose address a kernel launcher takes with .get(), and a view over memory
// the caller owns is made by a factory that names its device
// (TensorView<D, T>::over_device_memory, ::over_host_memory).
//
// Every conversion to another device is declared, not deleted: it fails with
// tessera's sentence (a static_assert naming both devices) in every context,
// including std::optional, containers, braced lists and function arguments,
// where a deleted function would only produce overload candidates.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "device.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "memory.hpp"
#include "shape.hpp"

namespace tessera {

template <Device D, DType T>
class Tensor;
template <Device D, class T>
class TensorView;

namespace detail {
template <class A>
inline constexpr bool dependent_false_v = false;

// The sentence of every implicit device change (tensor, view, pointer). The
// condition names both devices: "same_device<tessera::Cuda<1>, tessera::Cuda<0>>".
// Where the destination is host memory and the value sits on a GPU (ids,
// positions, grids and other host-side inputs), the fix is the other way
// round, and the sentence says so.
template <class To, class From>
constexpr void refuse_device_change() {
  if constexpr (is_cpu_v<To> && is_cuda_v<From>) {
    static_assert(same_device<To, From>,
                  "tessera: a tensor never changes device implicitly, and this one is wanted in host memory: "
                  "keep it on the host (do not move it to the GPU), or copy it back with tessera::to<Host>(t) "
                  "(or to the Cpu<N> slot named)");
  } else {
    static_assert(same_device<To, From>,
                  "tessera: a tensor never changes device implicitly; move it with tessera::to<Device>(t) "
                  "(or keep it where it is and compute there)");
  }
}
}  // namespace detail

// The address of T elements in D's memory. It does not convert to T*, to a
// span or to another device's DevicePtr: a launcher or backend takes the
// address with get(), by name. Kernels are never templated on D; only this
// host-side wrapper carries it.
template <Device D, class T>
class DevicePtr {
 public:
  using device_type = D;
  using element_type = T;

  DevicePtr() = default;

  // The one way in from a plain pointer: the caller states that `address`
  // is memory of D (an allocator, a communicator's buffer, a test).
  static DevicePtr assume_on_device(T* address) noexcept { return DevicePtr(address); }

  // A mutable pointer converts to a read-only one of the same device.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  DevicePtr(const DevicePtr<D, U>& other) noexcept : ptr_(other.get()) {}  // NOLINT: implicit by design

  template <Device D2, class U>
    requires(!same_device<D, D2>)
  DevicePtr(const DevicePtr<D2, U>&) {  // NOLINT: implicit, so that the sentence shows
    detail::refuse_device_change<D, D2>();
  }

  // The address in D's memory space, for kernels, launchers and backends.
  // Dereferenceable on the host only when D is a CPU slot.
  T* get() const noexcept { return ptr_; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  DevicePtr operator+(std::int64_t elements) const noexcept { return DevicePtr(ptr_ + elements); }
  friend bool operator==(DevicePtr a, DevicePtr b) noexcept { return a.ptr_ == b.ptr_; }

 private:
  explicit DevicePtr(T* p) noexcept : ptr_(p) {}
  T* ptr_ = nullptr;
};

namespace detail {

// Host element access, mixed into CPU tensors and views only: for any other
// device the (empty) primary template is used, so data(), at() and span() are
// missing members there. Derived provides device_ptr(), shape(), strides(),
// numel(); on a CPU slot the device pointer is a host address.
//
// span() (every element, in row-major order) needs contiguous storage, so it
// is mixed in only where that holds by type (Contiguous = true: Tensor). A
// view may be strided and has no span(), on any device; read a view with
// at(), or take tessera::contiguous(v).span().
template <class Derived, class D, class T, bool Contiguous, class Enable = void>
class HostElementAccess {};

template <class Derived, class D, class T>
class HostElementAccess<Derived, D, T, true, std::enable_if_t<is_cpu_v<D>>>
    : public HostElementAccess<Derived, D, T, false> {
 public:
  std::span<T> span() noexcept { return {this->self().raw(), static_cast<std::size_t>(this->self().numel())}; }
  std::span<const T> span() const noexcept {
    return {this->cself().raw(), static_cast<std::size_t>(this->cself().numel())};
  }
};

template <class Derived, class D, class T>
class HostElementAccess<Derived, D, T, false, std::enable_if_t<is_cpu_v<D>>> {
 public:
  // The host address of the first element (CPU slots are host memory).
  auto* raw() noexcept { return self().device_ptr().get(); }
  auto* raw() const noexcept { return cself().device_ptr().get(); }
  auto* data() noexcept { return raw(); }
  auto* data() const noexcept { return raw(); }

  // Element at a multi-index (as many indices as the rank), bounds-checked.
  template <std::integral... I>
  decltype(auto) at(I... indices) {
    return self().raw()[offset_of({static_cast<std::int64_t>(indices)...})];
  }
  template <std::integral... I>
  decltype(auto) at(I... indices) const {
    return cself().raw()[offset_of({static_cast<std::int64_t>(indices)...})];
  }

 protected:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }
  const Derived& cself() const noexcept { return static_cast<const Derived&>(*this); }

 private:
  std::int64_t offset_of(std::initializer_list<std::int64_t> idx) const {
    const Shape& shape = cself().shape();
    if (static_cast<int>(idx.size()) != shape.rank()) {
      throw ShapeError(concat("at() got ", idx.size(), " indices for a rank ", shape.rank(), " tensor ",
                              shape.to_string()));
    }
    const auto strides = cself().strides();
    std::int64_t offset = 0;
    int i = 0;
    for (std::int64_t k : idx) {
      if (k < 0 || k >= shape[i]) {
        throw ShapeError(concat("index ", k, " is out of range for dimension ", i, " of size ",
                                shape[i], " in at() on a ", shape.to_string(), " tensor"));
      }
      offset += k * strides[static_cast<std::size_t>(i)];
      ++i;
    }
    return offset;
  }
};

}  // namespace detail

// A non-owning window onto device memory: pointer, shape and element strides.
// T may be const (a read-only view). Views never extend a tensor's lifetime.
template <Device D, class T>
class TensorView : public detail::HostElementAccess<TensorView<D, T>, D, T, false> {
  static_assert(DType<std::remove_const_t<T>>,
                "tessera: TensorView element type must be float, bf16, f16, int32_t or int64_t");

 public:
  using device_type = D;
  using element_type = T;
  using value_type = std::remove_const_t<T>;

  TensorView() = default;

  // A view over memory the caller owns, on the device the type names: the
  // pointer's device must be D (a DevicePtr of another device does not
  // convert). Strides default to row-major.
  static TensorView over_device_memory(DevicePtr<D, T> ptr, Shape shape, Strides strides) {
    return {from_pointer, ptr.get(), shape, strides};
  }
  static TensorView over_device_memory(DevicePtr<D, T> ptr, Shape shape) {
    return {from_pointer, ptr.get(), shape, contiguous_strides(shape)};
  }
  // A view over host memory (a std::vector, a mapped file) as CPU slot D.
  static TensorView over_host_memory(T* ptr, Shape shape, Strides strides)
    requires is_cpu_v<D>
  {
    return {from_pointer, ptr, shape, strides};
  }
  static TensorView over_host_memory(T* ptr, Shape shape)
    requires is_cpu_v<D>
  {
    return {from_pointer, ptr, shape, contiguous_strides(shape)};
  }

  // A plain pointer states no device: `{t.raw(), shape}` or
  // TensorView(p, shape) is a sentence, not a view of the wrong memory.
  template <class P, class... Rest>
    requires std::is_pointer_v<P>
  TensorView(P, const Shape&, const Rest&...) {  // NOLINT: implicit, so that the sentence shows
    static_assert(detail::dependent_false_v<P>,
                  "tessera: a view is made from a pointer only by a factory that names its device: "
                  "TensorView<D, T>::over_device_memory(t.device_ptr(), shape) or "
                  "TensorView<Cpu<N>, T>::over_host_memory(host_pointer, shape)");
  }

  // A mutable view converts to a read-only view of the same device.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  TensorView(const TensorView<D, U>& other)  // NOLINT: implicit by design
      : ptr_(other.device_ptr().get()), shape_(other.shape()), strides_(other.strides()) {}

  // Views or tensors of another device never convert: move data with
  // tessera::to<D>(t). Declared (not deleted) so the sentence shows wherever
  // the conversion is attempted, std::optional and containers included.
  template <Device D2, class U>
    requires(!same_device<D, D2>)
  TensorView(const TensorView<D2, U>&) {  // NOLINT: implicit, so that the sentence shows
    detail::refuse_device_change<D, D2>();
  }
  template <Device D2, DType U>
    requires(!same_device<D, D2>)
  TensorView(const Tensor<D2, U>&) {  // NOLINT: implicit, so that the sentence shows
    detail::refuse_device_change<D, D2>();
  }

  // The first element's address in D's memory, for kernels and backends.
  DevicePtr<D, T> device_ptr() const noexcept { return DevicePtr<D, T>::assume_on_device(ptr_); }
  const Shape& shape() const noexcept { return shape_; }
  const Strides& strides() const noexcept { return strides_; }
  std::int64_t stride(int i) const { return strides_[static_cast<std::size_t>(shape_.axis(i))]; }
  int rank() const noexcept { return shape_.rank(); }
  std::int64_t dim(int i) const { return shape_[i]; }
  std::int64_t numel() const noexcept { return shape_.numel(); }
  bool is_contiguous() const noexcept { return tessera::is_contiguous(shape_, strides_); }

  TensorView<D, const T> as_const() const { return *this; }

  // Elements [start, stop) of dimension `axis` (negative axes count from the end).
  TensorView slice(int axis, std::int64_t start, std::int64_t stop) const {
    const int a = shape_.axis(axis);
    if (start < 0 || stop < start || stop > shape_[a]) {
      throw ShapeError(detail::concat("slice [", start, ", ", stop, ") is out of range for dimension ",
                                      a, " of size ", shape_[a], " in shape ", shape_.to_string()));
    }
    Shape s = shape_;
    s[a] = stop - start;
    return {from_pointer, ptr_ + start * strides_[static_cast<std::size_t>(a)], s, strides_};
  }

  // Index `index` of dimension `axis`, dropping that dimension.
  TensorView select(int axis, std::int64_t index) const {
    const int a = shape_.axis(axis);
    TensorView one = slice(a, index, index + 1);
    Shape s;
    Strides st{};
    for (int i = 0, j = 0; i < rank(); ++i) {
      if (i == a) continue;
      s.push_back(shape_[i]);
      st[static_cast<std::size_t>(j++)] = strides_[static_cast<std::size_t>(i)];
    }
    return {from_pointer, one.ptr_, s, st};
  }

  // Swaps two dimensions (no data moves).
  TensorView transpose(int axis0, int axis1) const {
    const int a = shape_.axis(axis0), b = shape_.axis(axis1);
    Shape s = shape_;
    Strides st = strides_;
    std::swap(s[a], s[b]);
    std::swap(st[static_cast<std::size_t>(a)], st[static_cast<std::size_t>(b)]);
    return {from_pointer, ptr_, s, st};
  }

  // Reorders dimensions: result dimension i is this view's dimension order[i].
  TensorView permute(std::span<const int> order) const {
    if (static_cast<int>(order.size()) != rank()) {
      throw ShapeError(detail::concat("permute got ", order.size(), " axes for a rank ", rank(), " view ",
                                      shape_.to_string()));
    }
    std::array<bool, kMaxRank> seen{};
    Shape s;
    Strides st{};
    for (std::size_t i = 0; i < order.size(); ++i) {
      const int a = shape_.axis(order[i]);
      if (seen[static_cast<std::size_t>(a)]) {
        throw ShapeError(detail::concat("permute names axis ", a, " twice"));
      }
      seen[static_cast<std::size_t>(a)] = true;
      s.push_back(shape_[a]);
      st[i] = strides_[static_cast<std::size_t>(a)];
    }
    return {from_pointer, ptr_, s, st};
  }
  TensorView permute(std::initializer_list<int> order) const {
    return permute(std::span<const int>(order.begin(), order.size()));
  }

  // Same elements, new shape; one dimension may be -1 (inferred). Needs a
  // contiguous view: copy with tessera::contiguous first otherwise.
  TensorView reshape(std::initializer_list<std::int64_t> dims) const {
    return reshape(std::span<const std::int64_t>(dims.begin(), dims.size()));
  }
  TensorView reshape(std::span<const std::int64_t> dims) const {
    if (!is_contiguous()) {
      throw ShapeError(detail::concat("reshape of a non-contiguous view ", shape_.to_string(),
                                      ": call tessera::contiguous first"));
    }
    return {from_pointer, ptr_, infer_shape(dims, numel())};
  }
  TensorView reshape(const Shape& shape) const { return reshape(shape.dims()); }

  // Inserts a dimension of size 1 at `axis` (0..rank).
  TensorView unsqueeze(int axis) const {
    const int a = axis < 0 ? axis + rank() + 1 : axis;
    if (a < 0 || a > rank()) throw ShapeError(detail::concat("unsqueeze axis ", axis, " out of range"));
    Shape s;
    Strides st{};
    for (int i = 0, j = 0; i <= rank(); ++i) {
      if (i == a) {
        s.push_back(1);
        st[static_cast<std::size_t>(i)] = 0;
      } else {
        s.push_back(shape_[j]);
        st[static_cast<std::size_t>(i)] = strides_[static_cast<std::size_t>(j)];
        ++j;
      }
    }
    return {from_pointer, ptr_, s, st};
  }

  static Shape infer_shape(std::span<const std::int64_t> dims, std::int64_t numel) {
    std::int64_t known = 1;
    int inferred = -1;
    std::vector<std::int64_t> out(dims.begin(), dims.end());
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (out[i] == -1) {
        if (inferred >= 0) throw ShapeError("reshape: only one dimension may be -1");
        inferred = static_cast<int>(i);
      } else {
        known *= out[i];
      }
    }
    if (inferred >= 0) {
      if (known == 0 || numel % known != 0) {
        throw ShapeError(detail::concat("reshape: cannot infer a dimension for ", numel, " elements"));
      }
      out[static_cast<std::size_t>(inferred)] = numel / known;
    }
    Shape s{std::span<const std::int64_t>(out)};
    if (s.numel() != numel) {
      throw ShapeError(detail::concat("reshape to ", s.to_string(), " (", s.numel(),
                                      " elements) from ", numel, " elements"));
    }
    return s;
  }

 private:
  template <Device, DType>
  friend class Tensor;
  template <Device, class>
  friend class TensorView;
  // Pointer construction is private and tagged: a plain pointer states no
  // device, so outside code goes through the named factories.
  struct FromPointer {};
  static constexpr FromPointer from_pointer{};
  TensorView(FromPointer, T* ptr, Shape shape, Strides strides) : ptr_(ptr), shape_(shape), strides_(strides) {}
  TensorView(FromPointer, T* ptr, Shape shape) : ptr_(ptr), shape_(shape), strides_(contiguous_strides(shape)) {}

  T* ptr_ = nullptr;
  Shape shape_;
  Strides strides_{};
};

// An owning, contiguous tensor on device D. Move-only: copying a tensor is
// always explicit (clone() on the same device, to<D2>() to another).
// The element type defaults to bf16, so Tensor<Cuda<0>> is a bf16 tensor.
template <Device D, DType T = bf16>
class Tensor : public detail::HostElementAccess<Tensor<D, T>, D, T, true> {
 public:
  using device_type = D;
  using element_type = T;
  using value_type = T;

  Tensor() = default;
  // Uninitialised storage for `shape` on D, charged to D's ledger.
  explicit Tensor(Shape shape)
      : buffer_(static_cast<std::size_t>(shape.numel()) * sizeof(T)), shape_(shape) {}

  // A moved-from tensor is empty (no storage, shape []), like a default one.
  Tensor(Tensor&& other) noexcept : buffer_(std::move(other.buffer_)), shape_(std::exchange(other.shape_, Shape{})) {}
  Tensor& operator=(Tensor&& other) noexcept {
    buffer_ = std::move(other.buffer_);
    shape_ = std::exchange(other.shape_, Shape{});
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  // No tensor changes device implicitly. These are declared, not deleted, so
  // that the compiler prints tessera's sentence naming both devices in every
  // context (std::optional, containers, function arguments). Move data with
  // tessera::to<D>(t).
  template <Device D2, DType U>
    requires(!same_device<D, D2>)
  Tensor(const Tensor<D2, U>&) {  // NOLINT: implicit, so that the sentence shows
    detail::refuse_device_change<D, D2>();
  }
  template <Device D2, DType U>
    requires(!same_device<D, D2>)
  Tensor(Tensor<D2, U>&&) {  // NOLINT: implicit, so that the sentence shows
    detail::refuse_device_change<D, D2>();
  }
  template <Device D2, DType U>
    requires(!same_device<D, D2>)
  Tensor& operator=(const Tensor<D2, U>&) {
    detail::refuse_device_change<D, D2>();
    return *this;
  }
  template <Device D2, DType U>
    requires(!same_device<D, D2>)
  Tensor& operator=(Tensor<D2, U>&&) {
    detail::refuse_device_change<D, D2>();
    return *this;
  }

  // The storage's address in D's memory, for kernels and backends (null for
  // an empty tensor). Host code reads CPU tensors with data(), span(), at().
  DevicePtr<D, T> device_ptr() noexcept { return DevicePtr<D, T>::assume_on_device(static_cast<T*>(buffer_.get())); }
  DevicePtr<D, const T> device_ptr() const noexcept {
    return DevicePtr<D, const T>::assume_on_device(static_cast<const T*>(buffer_.get()));
  }
  const Shape& shape() const noexcept { return shape_; }
  Strides strides() const noexcept { return contiguous_strides(shape_); }
  int rank() const noexcept { return shape_.rank(); }
  std::int64_t dim(int i) const { return shape_[i]; }
  std::int64_t numel() const noexcept { return shape_.numel(); }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(numel()) * sizeof(T); }
  // True for a default-constructed or moved-from tensor: it has no storage.
  bool empty() const noexcept { return buffer_.get() == nullptr; }

  // Views (and so every op, which reads its arguments through views) refuse
  // an empty tensor rather than read through a null pointer.
  TensorView<D, T> view() { return {TensorView<D, T>::from_pointer, checked_raw(), shape_}; }
  TensorView<D, const T> view() const { return {TensorView<D, const T>::from_pointer, checked_raw(), shape_}; }
  operator TensorView<D, T>() { return view(); }              // NOLINT: same device only
  operator TensorView<D, const T>() const { return view(); }  // NOLINT: same device only

  // Shorthands for the view operations.
  TensorView<D, T> slice(int axis, std::int64_t start, std::int64_t stop) { return view().slice(axis, start, stop); }
  TensorView<D, const T> slice(int axis, std::int64_t start, std::int64_t stop) const { return view().slice(axis, start, stop); }
  TensorView<D, T> select(int axis, std::int64_t i) { return view().select(axis, i); }
  TensorView<D, const T> select(int axis, std::int64_t i) const { return view().select(axis, i); }
  TensorView<D, T> transpose(int a, int b) { return view().transpose(a, b); }
  TensorView<D, const T> transpose(int a, int b) const { return view().transpose(a, b); }
  TensorView<D, T> permute(std::initializer_list<int> order) { return view().permute(order); }
  TensorView<D, const T> permute(std::initializer_list<int> order) const { return view().permute(order); }
  TensorView<D, T> reshape(std::initializer_list<std::int64_t> dims) { return view().reshape(dims); }
  TensorView<D, const T> reshape(std::initializer_list<std::int64_t> dims) const { return view().reshape(dims); }

  // Reinterprets the storage with a new shape of the same element count.
  void reshape_inplace(const Shape& shape) { shape_ = TensorView<D, T>::infer_shape(shape.dims(), numel()); }

  // ---- host-only construction helpers (CPU slots) ----
  static Tensor zeros(Shape shape)
    requires is_cpu_v<D>
  {
    Tensor t(shape);
    std::memset(t.raw(), 0, t.bytes());
    return t;
  }
  static Tensor full(Shape shape, T value)
    requires is_cpu_v<D>
  {
    Tensor t(shape);
    std::fill_n(t.raw(), t.numel(), value);
    return t;
  }
  static Tensor from(std::span<const T> values, Shape shape)
    requires is_cpu_v<D>
  {
    if (static_cast<std::int64_t>(values.size()) != shape.numel()) {
      throw ShapeError(detail::concat("Tensor::from got ", values.size(), " values for shape ",
                                      shape.to_string(), " (", shape.numel(), " elements)"));
    }
    Tensor t(shape);
    std::copy(values.begin(), values.end(), t.raw());
    return t;
  }
  static Tensor from(std::initializer_list<T> values, Shape shape)
    requires is_cpu_v<D>
  {
    return from(std::span<const T>(values.begin(), values.size()), shape);
  }

 private:
  T* checked_raw() const {
    if (empty()) {
      throw ValueError(detail::concat("use of an empty Tensor<", device_name<D>(), ", ", dtype_name<T>(),
                                      "> (default-constructed or moved-from)"));
    }
    return static_cast<T*>(buffer_.get());
  }

  Buffer<D> buffer_;
  Shape shape_;
};

// ---- traits shared by ops: what a tensor argument is and where it lives ----

namespace detail {
template <class X>
struct tensor_traits {
  static constexpr bool is_tensor = false;
};
template <Device D, DType T>
struct tensor_traits<Tensor<D, T>> {
  static constexpr bool is_tensor = true;
  static constexpr bool is_view = false;
  static constexpr bool is_read_only = false;
  using device = D;
  using element = T;
};
template <Device D, class T>
struct tensor_traits<TensorView<D, T>> {
  static constexpr bool is_tensor = true;
  static constexpr bool is_view = true;
  static constexpr bool is_read_only = std::is_const_v<T>;
  using device = D;
  using element = std::remove_const_t<T>;
};
}  // namespace detail

// A Tensor or TensorView of any device and element type.
template <class X>
concept AnyTensor = detail::tensor_traits<std::remove_cvref_t<X>>::is_tensor;

template <AnyTensor X>
using device_of = typename detail::tensor_traits<std::remove_cvref_t<X>>::device;
template <AnyTensor X>
using element_of = typename detail::tensor_traits<std::remove_cvref_t<X>>::element;

// Read-only view of any tensor argument.
template <Device D, DType T>
TensorView<D, const T> as_view(const Tensor<D, T>& t) { return t.view(); }
template <Device D, class T>
TensorView<D, const T> as_view(const TensorView<D, T>& v) { return v.as_const(); }

// Writable view of a tensor argument used as an output.
template <Device D, DType T>
TensorView<D, T> as_mut_view(Tensor<D, T>& t) { return t.view(); }
template <Device D, DType T>
TensorView<D, T> as_mut_view(const TensorView<D, T>& v) { return v; }

// The device gate of every op and layer: all tensor arguments share one device.
// A mismatch is a single static_assert whose condition names the two devices
// ("same_device<tessera::Cpu<0>, tessera::Cpu<1>>").
template <class A, class B>
constexpr void require_device_pair() {
  static_assert(same_device<A, B>,
                "tessera: operands live on different devices; move one explicitly with "
                "tessera::to<Device>(t) before calling this op");
}
template <class First, class... Rest>
constexpr void require_same_device() {
  (require_device_pair<First, Rest>(), ...);
}

template <class A, class B>
constexpr void require_dtype_pair() {
  static_assert(std::is_same_v<A, B>,
                "tessera: operands have different element types; convert one with tessera::ops::cast<T>(t)");
}
template <class First, class... Rest>
constexpr void require_same_dtype() {
  (require_dtype_pair<First, Rest>(), ...);
}

}  // namespace tessera
