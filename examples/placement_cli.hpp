// examples/placement_cli.hpp — the placement flags of the model examples:
// which policy (the closed set in placements.hpp), the per-device budgets,
// the planner's strategy and --plan-only; the planner's names of a policy's
// stages; the communicators each stage gets (in-process, NCCL, or MPI when
// the program runs under mpirun); budgets from the plan and the measured
// peaks against it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cli_common.hpp"
#include <tessera/comm/mpi.hpp>
#include <tessera/placement/memory_size.hpp>
#include <tessera/placement/planner.hpp>
#include <tessera/placement/stage.hpp>
#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
#include <tessera/comm/nccl.hpp>
#endif

namespace tessera::cli {

struct PlacementOptions {
  std::optional<std::string> placement;                  // --placement SPEC
  std::map<std::string, std::uint64_t> max_memory;       // --max-memory DEVICE=SIZE
  std::string strategy = "balanced";                     // --strategy NAME
  std::optional<std::size_t> vision_stage, embed_stage, head_stage;  // --pin PART=STAGE
  bool plan_only = false;                                // --plan-only
};

inline constexpr const char* kPlacementHelp = R"(placement:
  --placement SPEC          where the model runs (overrides --device); float32 on CPU
                            slots, bf16 on GPUs (builds with the CUDA backend):
                              cpu | cuda                    one device
                              cuda:f16 | cuda:float32       one GPU in f16 or float32 (GPUs
                                                            without bf16: T4, V100)
                              pipeline:cpu0,cpu1            layers split over 2 or 4 CPU slots
                              pipeline:cpu0,cpu1,cpu2,cpu3
                              tp:cpu0,cpu1                  tensor parallel over 2 or 4 CPU slots
                              tp:cpu0,cpu1,cpu2,cpu3        (under mpirun -np N: one slot per process)
                              pipeline:cuda0,cuda1          layers split over 2, 4 or 8 GPUs
                              pipeline:cuda0,cuda1,cuda2,cuda3
                              pipeline:cuda0,cuda1,...,cuda7   (all eight named)
                              tp:cuda0,cuda1                tensor parallel over 2, 4 or 8 GPUs (NCCL)
                              tp:cuda0,cuda1,cuda2,cuda3
                              tp:cuda0,cuda1,...,cuda7         (all eight named)
                              pipeline:tp(cuda0,cuda1),tp(cuda2,cuda3)   2 stages x tensor parallel 2
                              pipeline:tp(cuda0,cuda1,cuda2,cuda3),tp(cuda4,cuda5,cuda6,cuda7)
                                                            2 stages x tensor parallel 4
  --max-memory DEVICE=SIZE  budget of one device (cpu0, cuda1, ...), e.g. cuda0=20GiB or
                            cpu1=1.5GB (accelerate's units: GiB = 2^30, GB = 10^9);
                            repeat per device; the plan must fit before anything loads
  --strategy NAME           how layers are spread over stages: balanced (default; also
                            auto), balanced_low_0, sequential, internvl_split
  --pin PART=STAGE          put vision, embed or head (final norm + lm_head) on pipeline
                            stage STAGE (default 0 for all three)
  --plan-only               print the plan (from config.json and the safetensors headers,
                            nothing loaded) and exit; --prompt/--input-ids/--ids optional

)";

inline void add_placement_flags(FlagParser& p, PlacementOptions& o) {
  p.add_value("--placement", [&o](const std::string& v) { o.placement = v; });
  p.add_value("--max-memory", [&o](const std::string& v) {
    const auto eq = v.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == v.size()) {
      throw UsageError(detail::concat("--max-memory '", v, "': expected DEVICE=SIZE, e.g. cuda0=20GiB"));
    }
    try {
      o.max_memory[v.substr(0, eq)] = placement::parse_memory_size(v.substr(eq + 1));
    } catch (const ValueError& e) {
      throw UsageError(detail::concat("--max-memory '", v, "': ", e.what()));
    }
  });
  p.add_value("--strategy", [&o](const std::string& v) {
    try {
      (void)placement::parse_strategy(v);
    } catch (const ValueError& e) {
      throw UsageError(detail::concat("--strategy: ", e.what()));
    }
    o.strategy = v;
  });
  p.add_value("--pin", [&o](const std::string& v) {
    const auto eq = v.find('=');
    const std::string part = v.substr(0, eq);
    if (eq == std::string::npos || (part != "vision" && part != "embed" && part != "head")) {
      throw UsageError(detail::concat("--pin '", v, "': expected vision=STAGE, embed=STAGE or head=STAGE"));
    }
    const auto stage = static_cast<std::size_t>(parse_integer<std::uint64_t>("--pin", v.substr(eq + 1)));
    (part == "vision" ? o.vision_stage : part == "embed" ? o.embed_stage : o.head_stage) = stage;
  });
  p.add_switch("--plan-only", [&o] { o.plan_only = true; });
}

// The planner's name of a device type: Cpu<1> -> "cpu1".
template <Device D>
std::string device_key() {
  return detail::concat(is_cpu_v<D> ? "cpu" : "cuda", D::index);
}

// The planner's names of a stage's devices: {"cuda0", "cuda1"}.
template <class... Ds>
std::vector<std::string> stage_keys(std::tuple<Ds...>*) {
  return {device_key<Ds>()...};
}

// The planner's stages for policy P: {{"cpu0"}, {"cuda0", "cuda1"}, ...}.
template <class... Ss>
std::vector<std::vector<std::string>> stage_key_list(std::tuple<Ss...>*) {
  return {stage_keys(static_cast<devices_of_stage<Ss>*>(nullptr))...};
}
template <DevicePlacement P>
std::vector<std::vector<std::string>> plan_stages() {
  return stage_key_list(static_cast<stages_of<P>*>(nullptr));
}

// MPI, when this process was started by mpirun with more than one rank.
inline bool launched_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (const char* v = std::getenv(var); v != nullptr && std::string(v) != "1" && std::string(var) != "PMIX_RANK") {
      return true;
    }
  }
  return false;
}

// The communicator of each stage of P: in-process for CPU groups (MPI
// when `mpi` is given), NCCL or the same-GPU fallback for CUDA groups.
template <DevicePlacement P>
placement::Comms<P> make_comms(const comm::MpiSession* mpi) {
  return [&]<std::size_t... K>(std::index_sequence<K...>) {
    return placement::Comms<P>{[&]<std::size_t Kx>() {
      using S = stage_at<P, Kx>;
      return [&]<class... Ds>(std::tuple<Ds...>*) -> comm::Group<Ds...> {
        if constexpr (sizeof...(Ds) == 1) {
          return {};
        } else if (mpi != nullptr) {
          return comm::mpi_group<Ds...>(*mpi);
        } else if constexpr ((is_cuda_v<Ds> && ...)) {
#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
          return comm::cuda_group<Ds...>();
#else
          return comm::Group<Ds...>(std::string(
              "in-process: peer copies and ops::add (this build has no NCCL)"));
#endif
        } else {
          return {};
        }
      }(static_cast<devices_of_stage<S>*>(nullptr));
    }.template operator()<K>()...};
  }(std::make_index_sequence<stage_count<P>>{});
}

// Communicator descriptions for the plan table, one per tensor-parallel
// stage (the planner reads an "mpi"/"nccl" prefix as an in-place reduction).
template <DevicePlacement P>
std::string describe_comms(const placement::Comms<P>& comms) {
  std::string out;
  [&]<std::size_t... K>(std::index_sequence<K...>) {
    ((placement::stage_size<stage_at<P, K>> > 1
          ? (out += (out.empty() ? "" : "; ") + std::get<K>(comms).describe(), 0)
          : 0),
     ...);
  }(std::make_index_sequence<stage_count<P>>{});
  return out;
}

// f(device figures, ledger) for every device of policy P the plan has figures for.
template <DevicePlacement P, class F>
void for_each_planned_device(const placement::Plan& plan, F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((void)[&]<class D>(D*) {
      for (const auto& d : plan.devices) {
        if (d.device == device_key<D>()) f(d, ledger<D>());
      }
    }(static_cast<std::tuple_element_t<I, placement::policy_devices<P>>*>(nullptr)), ...);
  }(std::make_index_sequence<std::tuple_size_v<placement::policy_devices<P>>>{});
}

// Sets every device's ledger budget from the plan, so an allocation past it
// at run time is an OutOfMemory naming the device, not a crash.
template <DevicePlacement P>
void apply_budgets(const placement::Plan& plan) {
  for_each_planned_device<P>(plan, [](const placement::DeviceFigures& d, MemoryLedger& l) {
    if (d.budget) l.set_budget(*d.budget);
  });
}

// Each device's measured peak next to the plan's prediction, on stderr.
template <DevicePlacement P>
void print_peaks_against_plan(const placement::Plan& plan) {
  std::ostringstream os;
  os << "-- measured peak vs plan\n";
  for_each_planned_device<P>(plan, [&](const placement::DeviceFigures& d, const MemoryLedger& l) {
    const std::uint64_t peak = l.peak();
    os << "  " << d.device << ": measured " << format_bytes(peak) << ", predicted " << format_bytes(d.peak())
       << (peak <= d.peak() ? " (within the plan)\n" : " (OVER the plan)\n");
  });
  std::cerr << os.str();
}

}  // namespace tessera::cli
