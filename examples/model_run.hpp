// examples/model_run.hpp — run_placed, the part of a model example that
// depends on the placement: plan -> budgets -> load -> generate -> summary
// -> measured peaks against the plan. Only the per-placement translation
// units include it (examples/placement_tu.cpp.in, generated per example and
// placement by examples/CMakeLists.txt), each instantiating it once:
//
//   TESSERA_INSTANTIATE_RUN_PLACED(tessera::cli::TextGenerate, pp2_cpu)
#pragma once

#include <iostream>
#include <string>
#include <utility>

#include "model_main.hpp"
#include <tessera/io/checkpoint.hpp>

namespace tessera::cli {

#if defined(TESSERA_WITH_CUDA)
// Stops before anything is loaded when a GPU of P cannot run elements T (bf16
// below compute capability 8.0: T4, V100), naming the GPU and this program's
// choices: one GPU in f16 or float32, or the CPU.
template <DevicePlacement P, FloatType T>
void require_gpu_dtype() {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (..., [&]<class D>(D*) {
      if constexpr (is_cuda_v<D>) {
        if (const auto why = cuda::dtype_unsupported(dtype_name<T>(), cuda::gpu_info(D::index))) {
          throw UsageError(detail::concat(*why, ". Rerun with --placement cuda:f16 or --placement cuda:float32 "
                                                "(one GPU), with --device cpu (float32), or on a GPU of compute "
                                                "capability 8.0 or newer for the bf16 placements"));
        }
      }
    }(static_cast<std::tuple_element_t<I, placement::policy_devices<P>>*>(nullptr)));
  }(std::make_index_sequence<std::tuple_size_v<placement::policy_devices<P>>>{});
}
#endif

template <class F, DevicePlacement P, FloatType T>
int run_placed(const Job<F>& job, const std::string& label) {
  const ExampleOptions<F>& o = *job.options;
  const CommonOptions& c = o.common;
  placement::PlanRequest request = job.request;
  request.stages = plan_stages<P>();
  request.element_size = sizeof(T);
  request.one_process = job.mpi == nullptr;
  if (!job.inputs) {  // --plan-only without a prompt: the plan alone, on stdout
    request.communicator = "in-process";
    const placement::Plan plan = job.plan(request);
    std::cout << "placement " << label << "\n" << plan.table();
    return 0;
  }

  // The plan, from the headers, before anything is loaded: a placement that
  // does not fit fails here with every device's need and budget. --plan-only
  // opens no communicator (NCCL would need the GPUs): in one process the
  // plan assumes the in-process all-reduce, the costlier one.
  if (o.placement.plan_only && job.mpi == nullptr) {
    request.communicator = "in-process";
    std::cout << "-- placement " << label << "\n" << job.plan(request).table();
    return 0;
  }
#if defined(TESSERA_WITH_CUDA)
  require_gpu_dtype<P, T>();
#endif
  placement::Comms<P> comms = make_comms<P>(job.mpi);
  const std::string described = describe_comms<P>(comms);
  request.communicator = described.empty() ? "in-process" : described;
  const placement::Plan plan = job.plan(request);
  (o.placement.plan_only ? std::cout : std::cerr) << "-- placement " << label << "\n" << plan.table();
  if (o.placement.plan_only) return 0;
  apply_budgets<P>(plan);

  const auto load_start = Clock::now();
  const io::Checkpoint checkpoint = io::Checkpoint::open(c.model);
  const auto model = F::template load<P, T>(job.config, checkpoint, plan.layout, std::move(comms));
  RunStats stats;
  stats.prompt_tokens = static_cast<std::int64_t>(F::prompt_ids(job.inputs->prompt).size());
  stats.load_s = seconds(Clock::now() - load_start);
  const auto& input = F::model_input(job.inputs->prompt);
  if (c.logits_out) write_prompt_logits(model, input, stats.prompt_tokens, *c.logits_out);
  std::cerr << "-- answer (stdout)\n";
  generate_streamed(model, input, job.sampling, job.tokenizer, c.print_ids, stats);
  print_summary(F::name, stats, label);
  print_peaks_against_plan<P>(plan);
  return 0;
}

}  // namespace tessera::cli

// The explicit instantiation of run_placed for family F under the placement
// placements::TAG (placements.hpp), the whole content of a generated
// per-placement translation unit.
#define TESSERA_INSTANTIATE_RUN_PLACED(F, TAG)                                                               \
  template int tessera::cli::run_placed<F, tessera::cli::placements::TAG::policy,                            \
                                        tessera::cli::placements::TAG::element>(const tessera::cli::Job<F>&, \
                                                                                 const std::string&);
