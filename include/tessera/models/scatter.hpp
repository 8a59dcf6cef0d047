// tessera/models/scatter.hpp — vision features into text embeddings, the
// masked scatter every multimodal family does (transformers'
// `inputs_embeds.masked_scatter(mask, features)`): Qwen2.5-VL's image and
// video pads, InternVL's <IMG_CONTEXT>, MiniCPM-V's <unk> spans.
//
// The features are made on the vision stack's device and the embeddings
// live on each device of the embedding stage; they meet only through an
// explicit to<> (placement-semantics.md §2.6 #2, #8, #9 are this step with
// the devices mixed, which here does not compile).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <variant>

#include "../core/tensor.hpp"
#include "../ops/shape.hpp"

namespace tessera::models {

// Writes the rows of `features` over the rows of `embeddings` whose id is
// `placeholder`, in order. Placeholders sit in runs, one per item, so this
// is one copy per run. Both tensors must be on one device. The caller has
// checked that the placeholder count equals features.dim(0).
template <Device D, FloatType T, Device F>
void scatter_rows(Tensor<D, T>& embeddings, std::span<const std::int64_t> ids, std::int64_t placeholder,
                  const Tensor<F, T>& features) {
  static_assert(same_device<D, F>,
                "tessera: image/video features and the text embeddings they are scattered into live on different "
                "devices; move the features with tessera::to<Device>(features) first");
  if constexpr (same_device<D, F>) {
    std::int64_t used = 0;
    const auto n = static_cast<std::int64_t>(ids.size());
    for (std::int64_t i = 0; i < n;) {
      if (ids[static_cast<std::size_t>(i)] != placeholder) {
        ++i;
        continue;
      }
      std::int64_t end = i;
      while (end < n && ids[static_cast<std::size_t>(end)] == placeholder) ++end;
      ops::copy_into(embeddings.view().slice(0, i, end), features.view().slice(0, used, used + (end - i)));
      used += end - i;
      i = end;
    }
  }
}

// The same for features on a run-time-chosen device of a policy (a
// placement::AnyPolicyTensor, what placement::Pinned::run returns): moved to
// the embeddings' device with to<> unless they are already there.
template <Device D, FloatType T, class... Ts>
void scatter_rows(Tensor<D, T>& embeddings, std::span<const std::int64_t> ids, std::int64_t placeholder,
                  const std::variant<Ts...>& features) {
  std::visit([&](const auto& f) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(f)>, Tensor<D, T>>) {
      scatter_rows(embeddings, ids, placeholder, f);
    } else {
      scatter_rows(embeddings, ids, placeholder, to<D>(f));
    }
  }, features);
}

// A batch's features (one vision pass over every prompt's images, a
// placement::AnyPolicyTensor) handed out prompt by prompt, in order, still
// on the vision part's device. A batch of one prompt takes them all
// without a copy.
template <class Features>
class FeatureCursor {
 public:
  FeatureCursor(const std::optional<Features>& all, std::size_t prompts) : all_(all), whole_(prompts == 1) {}

  // The next prompt's `rows` rows; null when it has none. Valid until the
  // next call.
  const Features* next(std::int64_t rows) {
    if (rows == 0) return nullptr;
    const std::int64_t first = first_;
    first_ += rows;
    if (whole_) return &*all_;
    part_.emplace(std::visit([&](const auto& f) -> Features { return ops::slice(f, 0, first, first + rows); }, *all_));
    return &*part_;
  }

 private:
  const std::optional<Features>& all_;
  bool whole_;
  std::int64_t first_ = 0;  // the first row of the next prompt
  std::optional<Features> part_;
};

}  // namespace tessera::models
