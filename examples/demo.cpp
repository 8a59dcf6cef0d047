// tessera demo: the device of every tensor is part of its type.
//
// Builds tensors on two CPU slots, moves one explicitly with to<>, runs ops,
// runs a two-stage "pipeline" of layers across the slots with a memory budget
// on the second, shows what the budget does, and prints the memory ledger.
// CPU slots are budgeted, typed host arenas: the same placement machinery
// runs on them as on GPUs, so this program needs no GPU.
#include <cstdio>
#include <iostream>
#include <random>

#include <tessera/tessera.hpp>

namespace {
using namespace tessera;

template <Device D, class T>
void describe(const char* name, const Tensor<D, T>& t) {
  std::printf("  %-8s Tensor<%s, %s> %s\n", name, device_name<D>().c_str(), std::string(dtype_name<T>()).c_str(),
              t.shape().to_string().c_str());
}

template <Device D>
Tensor<D, float> random_on(Shape shape, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto host = Tensor<Host, float>(shape);
  for (float& v : host.span()) v = dist(gen);
  return to<D>(host);  // the only bridge between devices
}

void section(const char* title) { std::printf("\n== %s\n", title); }
}  // namespace

int main() {
  std::printf("tessera demo: the device is part of the type\n");

  section("1. tensors on two CPU slots");
  auto x = random_on<Cpu<0>>({4, 8}, 1);
  auto w0 = random_on<Cpu<0>>({16, 8}, 2);  // [out, in], Hugging Face layout
  auto w1 = random_on<Cpu<1>>({8, 16}, 3);
  describe("x", x);
  describe("w0", w0);
  describe("w1", w1);

  section("2. ops run where their operands live");
  auto h = ops::silu(ops::linear(x, w0));  // all on Cpu<0>
  describe("h", h);

  section("3. crossing a device boundary is explicit");
  // ops::linear(h, w1) would not compile:
  //   static assertion failed: tessera: operands live on different devices; move one
  //   explicitly with tessera::to<Device>(t) before calling this op
  //   note: 'tessera::same_device<tessera::Cpu<0>, tessera::Cpu<1> >' evaluates to false
  auto h1 = to<Cpu<1>>(h);
  auto y = ops::linear(h1, w1);
  describe("h1", h1);
  describe("y", y);

  section("4. a two-stage pipeline of layers, stage 1 under a 16 KiB budget");
  ledger<Cpu<1>>().set_budget(16 * 1024);
  nn::Linear<Cpu<0>, float> stage0(random_on<Cpu<0>>({32, 8}, 4));
  nn::Linear<Cpu<1>, float> stage1(random_on<Cpu<1>>({8, 32}, 5), random_on<Cpu<1>>({8}, 6));
  auto out = stage1.forward(to<Cpu<1>>(stage0.forward(x)));
  describe("out", out);
  std::printf("  out[0, :4] = %.4f %.4f %.4f %.4f\n", static_cast<double>(out.at(0, 0)),
              static_cast<double>(out.at(0, 1)), static_cast<double>(out.at(0, 2)),
              static_cast<double>(out.at(0, 3)));

  section("5. an allocation past the budget fails before anything is lost");
  try {
    Tensor<Cpu<1>, float> too_big({64, 64});
  } catch (const OutOfMemory& e) {
    std::printf("  caught tessera::OutOfMemory:\n    %s\n", e.what());
  }

  section("6. the memory ledger");
  print_memory_report(std::cout);
  return 0;
}
