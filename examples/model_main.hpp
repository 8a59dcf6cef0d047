// examples/model_main.hpp — the one driver every model example runs on.
// A family (text_generate.hpp, qwen2_5_vl.hpp) is the family's input
// handling plus a small traits struct; model_main<Family>(argc, argv) does
// the rest:
//
//   flags        the common input/decoding/running flags (cli_common.hpp),
//                the placement flags (placement_cli.hpp) and the family's own
//   checks       the model directory (tokenizer.json for --prompt and
//                --input-ids), --logits-out
//   mpirun       one process per tensor-parallel rank: rank 0 speaks, the
//                others are silenced (their errors still reach stderr)
//   --placement  the closed list of placements.hpp, each instantiated in its
//                own translation unit (model_run.hpp has run_placed)
//   inputs       config.json, the tokenizer, the family's prepare(), the
//                sampling options, the header on stderr
//   run_placed   plan -> budgets -> load -> generate -> summary -> measured
//                peaks against the plan
//
// Exit codes (main_guard): 0 success, 2 bad input or a placement that
// cannot work, 1 anything else.
//
// What a family F supplies (the smallest is text_generate.hpp):
//
//   static constexpr std::string_view name;     "text_generate": messages, summary
//   struct Options;                             its own flags' values
//   using Config;                               what load_config reads
//   using Prompt;                               what prepare() makes of the input
//   template <class P, class T> using Model;    the model under policy P
//   static const io::DecoderConfig& text_config(const Config&);   vocabulary, context
//   static std::span<const std::int64_t> prompt_ids(const Prompt&);
//   static decltype(auto) model_input(const Prompt&);   what model.forward(x, cache)
//                                                       and generate() take
//   template <class P, class T>
//   static Model<P, T> load(const Config&, const io::Checkpoint&, placement::Layout,
//                           placement::Comms<P>);
//     (the above is what run_placed needs: the family's header)
//   static std::string_view usage();            --help's first part
//   static placement::Plan plan(dir, const Config&, const placement::PlanRequest&);
//   static void add_flags(FlagParser&, Options&);
//   static Config load_config(const fs::path& dir);
//   static Inputs<Prompt> prepare(const CommonOptions&, const Options&,
//                                 const tokenizer::AnyTokenizer* tok,   // null with --ids
//                                 const Config&);
//   optional: static void check(const CommonOptions&, const Options&);   after parsing
//   optional: static constexpr std::string_view default_strategy;   --strategy's default
//   optional: static void plan_sizes(const CommonOptions&, const Options&, const Config&,
//                                    const Prompt* prompt,   // null: --plan-only, no prompt
//                                    placement::PlanRequest&);   sizes beyond the text
//     (the family's .cpp, with main() { return model_main<F>(argc, argv); })
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "cli_common.hpp"
#include "placement_cli.hpp"
#include "placements.hpp"
#include <tessera/comm/mpi.hpp>

namespace tessera::cli {

// The command line of example F: the flags every example has and F's own.
template <class F>
struct ExampleOptions {
  CommonOptions common;
  PlacementOptions placement;
  typename F::Options family;
};

// What a family's prepare() makes of the input: the prompt and what was
// processed, one line each for the header on stderr.
template <class Prompt>
struct Inputs {
  Prompt prompt;
  std::vector<std::string> lines;
  // Where the family's chat() stops on other tokens than generation_config.json
  // names (InternVL2: its template's separator only).
  std::optional<std::vector<std::int64_t>> eos_token_ids;
};

// One run, all but the placement: what model_main hands to run_placed.
template <class F>
struct Job {
  const ExampleOptions<F>* options = nullptr;
  typename F::Config config;
  const tokenizer::AnyTokenizer* tokenizer = nullptr;   // null with --ids: ids on stdout
  std::optional<Inputs<typename F::Prompt>> inputs;  // none: --plan-only without a prompt
  generate::SamplingOptions sampling;
  // The sizes, budgets, strategy and pins; run_placed adds the policy's
  // stages, the element size and the communicators, and calls plan.
  placement::PlanRequest request;
  // F::plan on this checkpoint. It is compiled here, in the main
  // translation unit, and called through this function: the planner, the
  // description and their JSON parsing would otherwise be two thirds of
  // every placement's compile time.
  std::function<placement::Plan(const placement::PlanRequest&)> plan;
  const comm::MpiSession* mpi = nullptr;              // under mpirun
};

// Plan, load, generate and report under policy P with elements T. Defined in
// model_run.hpp and explicitly instantiated once per placement, each in its
// own translation unit (examples/CMakeLists.txt); `label` names the placement.
template <class F, DevicePlacement P, FloatType T>
int run_placed(const Job<F>& job, const std::string& label);

// ---- the placements -------------------------------------------------------------

template <class F>
struct PlacedRun {
  int (*run)(const Job<F>&, const std::string&);
  std::string label;  // "Pipeline<Cpu<0>, Cpu<1>>, float32"
};

template <class F, class Entry>
PlacedRun<F> placed_run() {
  using P = typename Entry::policy;
  using T = typename Entry::element;
  return {&run_placed<F, P, T>, policy_name<P>() + ", " + std::string(dtype_name<T>())};
}

// --plan-only under a placement this build cannot run (a CUDA one without
// the CUDA backend): the plan needs only the stages' device names and the
// element size, so a CPU-only machine plans a GPU deployment.
template <class F, DevicePlacement P, FloatType T>
int plan_placed(const Job<F>& job, const std::string& label) {
  placement::PlanRequest request = job.request;
  request.stages = plan_stages<P>();
  request.element_size = sizeof(T);
  request.one_process = true;
  request.communicator = "in-process";
  std::cout << "-- placement " << label << "\n" << job.plan(request).table();
  return 0;
}

// "cpu, pipeline:cpu0,cpu1, ...": the --placement spellings this build has.
inline std::string placement_specs() {
  std::string out;
#define TESSERA_SPEC(tag) out += (out.empty() ? "" : ", ") + std::string(placements::tag::spec);
  TESSERA_EXAMPLE_CPU_PLACEMENTS(TESSERA_SPEC)
  TESSERA_EXAMPLE_CUDA_PLACEMENTS(TESSERA_SPEC)
#undef TESSERA_SPEC
  return out;
}

// The run of --placement `spec` (or --device), or bad input naming the
// placements there are.
// `plan_only`: a CUDA placement of a build without CUDA still plans.
template <class F>
PlacedRun<F> find_placement(const std::string& spec, [[maybe_unused]] bool plan_only) {
#define TESSERA_FIND(tag) \
  if (spec == placements::tag::spec) return placed_run<F, placements::tag>();
  TESSERA_EXAMPLE_CPU_PLACEMENTS(TESSERA_FIND)
  TESSERA_EXAMPLE_CUDA_PLACEMENTS(TESSERA_FIND)
#undef TESSERA_FIND
#if !defined(TESSERA_WITH_CUDA)
#define TESSERA_FIND_PLAN(tag)                                                                     \
  if (plan_only && spec == placements::tag::spec) {                                                \
    using P = placements::tag::policy;                                                             \
    return {&plan_placed<F, P, placements::tag::element>,                                          \
            policy_name<P>() + ", " + std::string(dtype_name<placements::tag::element>()) +        \
                " (plan only: this build has no CUDA backend)"};                                      \
  }
  TESSERA_EXAMPLE_CUDA_LIST(TESSERA_FIND_PLAN)
#undef TESSERA_FIND_PLAN
  if (spec.find("cuda") != std::string::npos) {
    throw UsageError(detail::concat("--placement ", spec, ": this build has no CUDA backend (configure with "
                                    "-DTESSERA_CUDA=ON on a machine with nvcc); --plan-only still plans it; "
                                    "to run, use one of ", placement_specs()));
  }
#endif
  throw UsageError(detail::concat("--placement '", spec, "' is not one of the placements this program is built "
                                  "with: ", placement_specs()));
}

// ---- mpirun ---------------------------------------------------------------------

// Under mpirun each process is one rank of a tensor-parallel group; rank 0
// speaks, the others compute silently. Their errors still reach stderr:
// the destructor gives std::cerr back while an exception unwinds to main_guard.
class MpiProcess {
 public:
  explicit MpiProcess(const std::string& spec) {
    if (!launched_by_mpirun()) return;
    if (!spec.starts_with("tp:")) {
      throw UsageError(detail::concat("--placement ", spec, " under mpirun: only tensor-parallel placements "
                                      "(tp:...) run one rank per process"));
    }
    session_ = std::make_unique<comm::MpiSession>();
    if (session_->rank() != 0) {
      std::cout.flush();
      if (std::freopen("/dev/null", "w", stdout) == nullptr) throw IoError("cannot silence stdout of mpi rank > 0");
      saved_ = std::cerr.rdbuf(silenced_.rdbuf());
    }
  }
  MpiProcess(const MpiProcess&) = delete;
  MpiProcess& operator=(const MpiProcess&) = delete;
  ~MpiProcess() {
    if (saved_ != nullptr) std::cerr.rdbuf(saved_);
  }

  const comm::MpiSession* session() const noexcept { return session_.get(); }

 private:
  std::unique_ptr<comm::MpiSession> session_;
  std::ostringstream silenced_;
  std::streambuf* saved_ = nullptr;
};

// ---- the driver -----------------------------------------------------------------

template <class F>
ExampleOptions<F> parse_example_args(int argc, char** argv) {
  ExampleOptions<F> o;
  if constexpr (requires { F::default_strategy; }) o.placement.strategy = std::string(F::default_strategy);
  FlagParser parser;
  add_common_flags(parser, o.common);
  add_placement_flags(parser, o.placement);
  F::add_flags(parser, o.family);
  parser.parse(argc, argv);
  if (o.common.help) return o;
  check_common_options(o.common, !o.placement.plan_only);
  if (o.placement.placement && o.common.device != "cpu") {
    throw UsageError("give --placement or --device, not both (--device cuda is --placement cuda)");
  }
  if constexpr (requires { F::check(o.common, o.family); }) F::check(o.common, o.family);
  return o;
}

// The ids --ids or --input-ids gave, if either did.
inline std::optional<std::vector<std::int64_t>> given_ids(const CommonOptions& c) {
  if (c.ids) return parse_ids(*c.ids, "--ids");
  if (c.input_ids) return parse_ids(*c.input_ids, "--input-ids");
  return std::nullopt;
}

// How the prompt was given, for the header: --ids, --input-ids or the text.
inline std::string prompt_source(const CommonOptions& c, std::string_view how_templated = "chat template") {
  if (c.ids) return "--ids";
  if (c.input_ids) return "--input-ids";
  return detail::concat("\"", *c.prompt, "\" (", c.raw ? std::string_view("raw") : how_templated, ")");
}

template <class F>
int run_example(const ExampleOptions<F>& o) {
  const CommonOptions& c = o.common;
  check_model_dir(c.model, /*tokenizer=*/c.prompt || c.input_ids);  // not with --ids or a bare --plan-only
  if (c.logits_out) check_output_path(*c.logits_out);
  const std::string spec = o.placement.placement.value_or(c.device);
  const MpiProcess mpi(spec);
  const PlacedRun<F> placed = find_placement<F>(spec, o.placement.plan_only);

  Job<F> job;
  job.options = &o;
  job.mpi = mpi.session();
  job.config = F::load_config(c.model);
  job.plan = [&](const placement::PlanRequest& request) { return F::plan(c.model, job.config, request); };
  const io::DecoderConfig& text = F::text_config(job.config);
  placement::PlanRequest& r = job.request;
  r.budgets = o.placement.max_memory;
  r.strategy = placement::parse_strategy(o.placement.strategy);
  r.pins.vision = o.placement.vision_stage;
  r.pins.embed = o.placement.embed_stage;
  r.pins.head = o.placement.head_stage;
  const auto add_plan_sizes = [&](const typename F::Prompt* prompt) {
    if constexpr (requires { F::plan_sizes(c, o.family, job.config, prompt, r); }) {
      F::plan_sizes(c, o.family, job.config, prompt, r);
    }
  };
  if (!c.prompt && !c.input_ids && !c.ids) {  // --plan-only: --max-context tokens of prompt
    r.max_context = c.max_context.value_or(4096);
    r.max_prompt = r.max_context;
    add_plan_sizes(nullptr);
    return placed.run(job, placed.label);
  }

  std::optional<tokenizer::AnyTokenizer> tok;
  if (!c.ids) tok.emplace(tokenizer::load_tokenizer(c.model));
  job.tokenizer = tok ? &*tok : nullptr;
  const auto start = Clock::now();
  job.inputs.emplace(F::prepare(c, o.family, job.tokenizer, job.config));
  const double processed_s = seconds(Clock::now() - start);
  const std::span<const std::int64_t> ids = F::prompt_ids(job.inputs->prompt);
  check_ids(ids, text.vocab_size, c.ids ? "--ids" : "--input-ids");
  const auto prompt_tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t context_limit = c.max_context.value_or(text.max_position_embeddings);
  job.sampling =
      sampling_options(c, io::GenerationConfig::load_or_default(c.model, text), prompt_tokens, context_limit);
  if (job.inputs->eos_token_ids) job.sampling.eos_token_ids = *job.inputs->eos_token_ids;
  r.max_context = std::min(context_limit, prompt_tokens + job.sampling.max_new_tokens);
  r.max_prompt = prompt_tokens;
  add_plan_sizes(&job.inputs->prompt);

  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "-- " << F::name << ": " << c.model.string() << "\n";
  for (const std::string& line : job.inputs->lines) os << line << "\n";
  os << "processed in " << processed_s << " s\n";
  std::cerr << os.str();
  if (c.print_ids) print_ids("prompt ids", ids);
  return placed.run(job, placed.label);
}

// main() of example F.
template <class F>
int model_main(int argc, char** argv) {
  return main_guard(F::name, [&] {
    const ExampleOptions<F> options = parse_example_args<F>(argc, argv);
    if (options.common.help) {
      std::cout << F::usage() << kDecodingHelp << "\n" << kPlacementHelp << kRunningHelp;
      return 0;
    }
    return run_example<F>(options);
  });
}

}  // namespace tessera::cli
