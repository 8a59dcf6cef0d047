// tessera/generate/chat.hpp — Qwen2's chat template.
//
// What tokenizer_config.json's chat_template (Jinja) renders for
// Qwen2-Instruct, written out in C++ so tessera needs no template engine:
//
//   {% for message in messages %}
//     {% if loop.first and messages[0]['role'] != 'system' %}
//       <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
//     {% endif %}
//     <|im_start|>{role}\n{content}<|im_end|>\n
//   {% endfor %}
//   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}
//
// The text is then encoded with the tokenizer (which maps "<|im_start|>" and
// "<|im_end|>" to their special ids), as transformers' apply_chat_template
// does with tokenize=True.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace tessera::generate {

struct ChatMessage {
  std::string role;
  std::string content;
};

inline constexpr std::string_view kQwen2DefaultSystemPrompt = "You are a helpful assistant.";

namespace detail {
inline void append_turn(std::string& out, std::string_view role, std::string_view content) {
  out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
}
}  // namespace detail

// Qwen2's chat template: the default system message when the first message
// is not a system message (so an empty conversation renders no system turn,
// as the template's loop never runs), one turn per message, and the opening
// of the assistant's turn when add_generation_prompt.
inline std::string apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out;
  if (!messages.empty() && messages.front().role != "system") {
    detail::append_turn(out, "system", kQwen2DefaultSystemPrompt);
  }
  for (const ChatMessage& m : messages) detail::append_turn(out, m.role, m.content);
  if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

}  // namespace tessera::generate
