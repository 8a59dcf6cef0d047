// A user program: two CPU slots, an explicit move between them, an op, a
// layer, and the per-device memory ledger. Exits 0 only if every number is
// what it must be.
#include <cstdint>
#include <exception>
#include <iostream>
#include <type_traits>

#include <tessera/tessera.hpp>
#include <tessera/nn/linear.hpp>
#include <tessera/ops/elementwise.hpp>

using namespace tessera;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "consumer: FAILED: " << what << "\n";
    ++failures;
  }
}

template <Device D>
bool equals(const Tensor<D, float>& t, std::initializer_list<float> want) {
  if (t.numel() != static_cast<std::int64_t>(want.size())) return false;
  std::int64_t i = 0;
  for (float w : want) {
    if (t.data()[i++] != w) return false;
  }
  return true;
}

}  // namespace

int main() {
  // The device is part of the type: no implicit way from one slot to another
  // (such a conversion is a compile error naming both devices).
  static_assert(std::is_same_v<device_of<Tensor<Cpu<1>, float>>, Cpu<1>>);

  try {
    const auto a = Tensor<Cpu<0>, float>::from({1, 2, 3, 4, 5, 6}, {2, 3});
    const auto b_slot1 = Tensor<Cpu<1>, float>::from({10, 20, 30, 40, 50, 60}, {2, 3});

    // The only bridge between devices: an explicit, ledger-accounted copy.
    const Tensor<Cpu<0>, float> b = to<Cpu<0>>(b_slot1);
    const Tensor<Cpu<0>, float> sum = ops::add(a, b);
    expect(equals(sum, {11, 22, 33, 44, 55, 66}), "ops::add(a, to<Cpu<0>>(b)) == a + b");

    // A layer on slot 1 (OpenBLAS behind it): y = x @ W^T with W [2, 3].
    const nn::Linear<Cpu<1>, float> proj(Tensor<Cpu<1>, float>::from({1, 0, 0, 0, 1, 1}, {2, 3}));
    const Tensor<Cpu<1>, float> y = proj.forward(to<Cpu<1>>(sum));
    expect(equals(y, {11, 55, 44, 121}), "nn::Linear on Cpu<1> == x @ W^T");

    print_memory_report(std::cout);

    // Live bytes per slot: Cpu<0> holds a, b, sum (3 x 6 floats); Cpu<1> holds
    // b_slot1 and the weight (2 x 6 floats) and y (4 floats); the temporary
    // to<Cpu<1>>(sum) has been released.
    expect(ledger<Cpu<0>>().live() == 3 * 6 * sizeof(float), "Cpu<0> ledger: 72 bytes live");
    expect(ledger<Cpu<1>>().live() == (2 * 6 + 4) * sizeof(float), "Cpu<1> ledger: 64 bytes live");
    expect(ledger<Cpu<1>>().peak() >= (3 * 6 + 4) * sizeof(float), "Cpu<1> ledger: peak counts the copy");
  } catch (const std::exception& e) {
    std::cerr << "consumer: FAILED with an exception: " << e.what() << "\n";
    return 1;
  }
  if (failures != 0) return 1;
  std::cout << "consumer: OK\n";
  return 0;
}
