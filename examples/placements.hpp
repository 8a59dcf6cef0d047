// examples/placements.hpp — the closed set of placements the model examples
// are built with: each --placement spelling, its policy and element type.
//
// Every entry is instantiated in its own translation unit per example:
// examples/CMakeLists.txt reads the X(...) lines of the two lists below and
// generates <example>_<tag>.cpp (examples/placement_tu.cpp.in), which
// explicitly instantiates run_placed<Family, policy, element> (model_run.hpp);
// the example's main translation unit only declares it (model_main.hpp).
// So keep one X(tag) per line. An entry whose translation unit is missing
// is a link error naming run_placed<..., policy, ...>.
//
// Adding a placement: a struct here, its X(tag) line in one of the lists,
// the spelling in kPlacementHelp (placement_cli.hpp) and docs/models.md.
#pragma once

#include <string_view>

#include <tessera/core/dtype.hpp>
#include <tessera/placement/policy.hpp>

namespace tessera::cli::placements {

// ---- CPU slots, float32 (every build) -------------------------------------------
struct cpu {
  static constexpr std::string_view spec = "cpu";
  using policy = Single<Cpu<0>>;
  using element = float;
};
struct pp2_cpu {
  static constexpr std::string_view spec = "pipeline:cpu0,cpu1";
  using policy = Pipeline<Cpu<0>, Cpu<1>>;
  using element = float;
};
struct tp2_cpu {
  static constexpr std::string_view spec = "tp:cpu0,cpu1";
  using policy = TensorParallel<Cpu<0>, Cpu<1>>;
  using element = float;
};
struct pp4_cpu {
  static constexpr std::string_view spec = "pipeline:cpu0,cpu1,cpu2,cpu3";
  using policy = Pipeline<Cpu<0>, Cpu<1>, Cpu<2>, Cpu<3>>;
  using element = float;
};
struct tp4_cpu {
  static constexpr std::string_view spec = "tp:cpu0,cpu1,cpu2,cpu3";
  using policy = TensorParallel<Cpu<0>, Cpu<1>, Cpu<2>, Cpu<3>>;
  using element = float;
};

#define TESSERA_EXAMPLE_CPU_PLACEMENTS(X) \
  X(cpu)                                  \
  X(pp2_cpu)                              \
  X(tp2_cpu)                              \
  X(pp4_cpu)                              \
  X(tp4_cpu)

// ---- CUDA devices, bf16 unless the spec says otherwise (CUDA builds) ------------
// The layouts big checkpoints need: pipelines and tensor parallel over 2, 4
// and 8 GPUs, and two tensor-parallel stages (2 x 2, 2 x 4).
struct cuda {
  static constexpr std::string_view spec = "cuda";
  using policy = Single<Cuda<0>>;
  using element = bf16;
};
// One GPU in f16 or float32: for GPUs without bf16 (T4, V100: compute
// capability below 8.0), and float32 also to compare a GPU run with the
// float32 references of the CPU.
struct cuda_f16 {
  static constexpr std::string_view spec = "cuda:f16";
  using policy = Single<Cuda<0>>;
  using element = f16;
};
struct cuda_float32 {
  static constexpr std::string_view spec = "cuda:float32";
  using policy = Single<Cuda<0>>;
  using element = float;
};
struct pp2_cuda {
  static constexpr std::string_view spec = "pipeline:cuda0,cuda1";
  using policy = Pipeline<Cuda<0>, Cuda<1>>;
  using element = bf16;
};
struct tp2_cuda {
  static constexpr std::string_view spec = "tp:cuda0,cuda1";
  using policy = TensorParallel<Cuda<0>, Cuda<1>>;
  using element = bf16;
};
struct pp2_tp2_cuda {
  static constexpr std::string_view spec = "pipeline:tp(cuda0,cuda1),tp(cuda2,cuda3)";
  using policy = Pipeline<TensorParallel<Cuda<0>, Cuda<1>>, TensorParallel<Cuda<2>, Cuda<3>>>;
  using element = bf16;
};
struct pp4_cuda {
  static constexpr std::string_view spec = "pipeline:cuda0,cuda1,cuda2,cuda3";
  using policy = Pipeline<Cuda<0>, Cuda<1>, Cuda<2>, Cuda<3>>;
  using element = bf16;
};
struct pp8_cuda {
  static constexpr std::string_view spec = "pipeline:cuda0,cuda1,cuda2,cuda3,cuda4,cuda5,cuda6,cuda7";
  using policy = Pipeline<Cuda<0>, Cuda<1>, Cuda<2>, Cuda<3>, Cuda<4>, Cuda<5>, Cuda<6>, Cuda<7>>;
  using element = bf16;
};
struct tp4_cuda {
  static constexpr std::string_view spec = "tp:cuda0,cuda1,cuda2,cuda3";
  using policy = TensorParallel<Cuda<0>, Cuda<1>, Cuda<2>, Cuda<3>>;
  using element = bf16;
};
struct tp8_cuda {
  static constexpr std::string_view spec = "tp:cuda0,cuda1,cuda2,cuda3,cuda4,cuda5,cuda6,cuda7";
  using policy = TensorParallel<Cuda<0>, Cuda<1>, Cuda<2>, Cuda<3>, Cuda<4>, Cuda<5>, Cuda<6>, Cuda<7>>;
  using element = bf16;
};
struct pp2_tp4_cuda {
  static constexpr std::string_view spec = "pipeline:tp(cuda0,cuda1,cuda2,cuda3),tp(cuda4,cuda5,cuda6,cuda7)";
  using policy = Pipeline<TensorParallel<Cuda<0>, Cuda<1>, Cuda<2>, Cuda<3>>,
                          TensorParallel<Cuda<4>, Cuda<5>, Cuda<6>, Cuda<7>>>;
  using element = bf16;
};

#define TESSERA_EXAMPLE_CUDA_LIST(X) \
  X(cuda)                                  \
  X(cuda_f16)                              \
  X(cuda_float32)                          \
  X(pp2_cuda)                              \
  X(tp2_cuda)                              \
  X(pp2_tp2_cuda)                          \
  X(pp4_cuda)                              \
  X(pp8_cuda)                              \
  X(tp4_cuda)                              \
  X(tp8_cuda)                              \
  X(pp2_tp4_cuda)
// Built (a translation unit each) only with the CUDA backend; without it
// they still plan (--plan-only needs the stages' names, not the devices).
#if defined(TESSERA_WITH_CUDA)
#define TESSERA_EXAMPLE_CUDA_PLACEMENTS(X) TESSERA_EXAMPLE_CUDA_LIST(X)
#else
#define TESSERA_EXAMPLE_CUDA_PLACEMENTS(X)
#endif

}  // namespace tessera::cli::placements
