// tessera/generate/chat.hpp — the chat templates of the supported checkpoints,
// written out in C++ so tessera needs no template engine.
//
// * ChatML (Qwen2, Qwen2.5-VL, MiniCPM-V 2.6): what Qwen2-Instruct's
//   tokenizer_config.json chat_template (Jinja) renders:
//
//     {% for message in messages %}
//       {% if loop.first and messages[0]['role'] != 'system' %}
//         <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
//       {% endif %}
//       <|im_start|>{role}\n{content}<|im_end|>\n
//     {% endfor %}
//     {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}
//
//   Qwen2.5-VL's chat_template.json renders the same for string contents;
//   MiniCPM-V 2.6's chat() feeds its messages through this template too.
//
// * InternVL2's conversation templates "Hermes-2", "internlm2-chat" and
//   "phi3-chat", as InternVL's conversation.py (SeparatorStyle.MPT) renders
//   them for model.chat() — not as the checkpoints' jinja chat_template does
//   (docs/tokenizer.md, "Chat templates", lists the differences):
//
//     system_template(system) + sep
//     for each message: role_prefix + content + sep   (content non-empty)
//                       role_prefix                   (content empty)
//     add_generation_prompt: assistant role_prefix
//
//   Hermes-2 / internlm2-chat: "<|im_start|>system\n{system}", roles
//   "<|im_start|>user\n" / "<|im_start|>assistant\n", sep "<|im_end|>" (no
//   newline after it). phi3-chat: "<|system|>\n{system}", "<|user|>\n" /
//   "<|assistant|>\n", sep "<|end|>". The default system message of all three
//   is InternVL2's (kInternVL2DefaultSystemPrompt).
//
// Sources (facts only): OpenGVLab/InternVL internvl_chat/internvl/conversation.py
// and internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py at
// 0dc48a2 (the InternVL 2.0 release; the rendering is unchanged at 2410d1d);
// internvl_chat/README.md at 2410d1d for the multi-image and video questions.
//
// The text is then encoded with the checkpoint's tokenizer (which maps the
// markers to their special ids), as transformers' apply_chat_template does
// with tokenize=True and as InternVL's chat() does with tokenizer(query).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"

namespace tessera::generate {

struct ChatMessage {
  std::string role;
  std::string content;
};

// The templates tessera renders. chatml: Qwen2 / Qwen2.5-VL / MiniCPM-V 2.6;
// the others: InternVL2's conversation templates, named by config.json's
// "template" key.
enum class ChatTemplate { chatml, hermes2, internlm2_chat, phi3_chat };

inline constexpr std::string_view kQwen2DefaultSystemPrompt = "You are a helpful assistant.";

// InternVL2's system message (conversation.py, all three templates; chat()
// uses it unless config.json has a "system_message").
inline constexpr std::string_view kInternVL2DefaultSystemPrompt =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";

// The name as config.json spells it ("chatml" for ChatML, which no config names).
constexpr std::string_view template_name(ChatTemplate t) noexcept {
  switch (t) {
    case ChatTemplate::chatml: return "chatml";
    case ChatTemplate::hermes2: return "Hermes-2";
    case ChatTemplate::internlm2_chat: return "internlm2-chat";
    case ChatTemplate::phi3_chat: return "phi3-chat";
  }
  return "?";
}

constexpr std::string_view default_system_prompt(ChatTemplate t) noexcept {
  return t == ChatTemplate::chatml ? kQwen2DefaultSystemPrompt : kInternVL2DefaultSystemPrompt;
}

namespace detail {

inline void append_turn(std::string& out, std::string_view role, std::string_view content) {
  out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
}

struct ConversationStyle {
  std::string_view system_prefix;  // system_template without "{system_message}"
  std::string_view user;
  std::string_view assistant;
  std::string_view sep;
};

constexpr ConversationStyle conversation_style(ChatTemplate t) noexcept {
  if (t == ChatTemplate::phi3_chat) return {"<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>"};
  return {"<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"};
}

inline std::string render_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                 const std::optional<std::string_view>& system) {
  std::string out;
  if (system) {
    detail::append_turn(out, "system", *system);
  } else if (!messages.empty() && messages.front().role != "system") {
    detail::append_turn(out, "system", kQwen2DefaultSystemPrompt);
  }
  for (const ChatMessage& m : messages) detail::append_turn(out, m.role, m.content);
  if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

inline std::string render_conversation(ChatTemplate t, std::span<const ChatMessage> messages,
                                       bool add_generation_prompt, std::optional<std::string_view> system) {
  const ConversationStyle style = conversation_style(t);
  std::size_t first = 0;  // index of messages[0] in the caller's list
  if (!messages.empty() && messages.front().role == "system") {
    system = messages.front().content;
    messages = messages.subspan(1);
    first = 1;
  }
  std::string out;
  out.append(style.system_prefix).append(system.value_or(kInternVL2DefaultSystemPrompt)).append(style.sep);
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    std::string_view prefix;
    if (m.role == "user") {
      prefix = style.user;
    } else if (m.role == "assistant") {
      prefix = style.assistant;
    } else {
      throw ValueError("chat template " + std::string(template_name(t)) + ": message " +
                       std::to_string(first + i) + " has role \"" + m.role +
                       "\"; InternVL's conversation templates have a system message (first message only), "
                       "\"user\" and \"assistant\"");
    }
    out.append(prefix);
    // conversation.py writes the separator only after a non-empty message: an
    // empty one is an open turn, like the generation prompt.
    if (!m.content.empty()) out.append(m.content).append(style.sep);
  }
  if (add_generation_prompt) out.append(style.assistant);
  return out;
}

}  // namespace detail

// Qwen2's chat template: the default system message when the first message
// is not a system message (so an empty conversation renders no system turn,
// as the template's loop never runs), one turn per message, and the opening
// of the assistant's turn when add_generation_prompt.
inline std::string apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  return detail::render_chatml(messages, add_generation_prompt, std::nullopt);
}

// Renders a conversation with template t.
//
// `system` replaces the default system message. For ChatML it becomes a
// leading system turn (what MiniCPM-V's chat(system_prompt=...) and a leading
// {"role": "system"} message do); for InternVL's templates it is the
// template's system_message (InternVL's `model.system_message`). A leading
// message with role "system" does the same; giving both is refused.
//
// ChatML takes any role names. InternVL's templates take "user" and
// "assistant" after the optional leading system message, in any order (chat()
// alternates them); a message with empty content renders as an open turn (its
// role prefix only), as conversation.py does. The system message is always
// written for InternVL (conversation.py has no way to omit it), even for an
// empty conversation.
inline std::string render(ChatTemplate t, std::span<const ChatMessage> messages, bool add_generation_prompt,
                          std::optional<std::string_view> system = std::nullopt) {
  if (system && !messages.empty() && messages.front().role == "system") {
    throw ValueError("chat template " + std::string(template_name(t)) +
                     ": both a system message argument and a leading \"system\" message were given; use one");
  }
  if (t == ChatTemplate::chatml) return detail::render_chatml(messages, add_generation_prompt, system);
  return detail::render_conversation(t, messages, add_generation_prompt, system);
}

// A conversation with its own system message (nullopt: the template's default).
struct Conversation {
  std::optional<std::string> system;
  std::vector<ChatMessage> messages;
};

inline std::string render(ChatTemplate t, const Conversation& conversation, bool add_generation_prompt) {
  return render(t, conversation.messages, add_generation_prompt,
                conversation.system ? std::optional<std::string_view>(*conversation.system) : std::nullopt);
}

// The strings whose token ends generation. The first is the end-of-turn
// marker (what InternVL's chat() passes as eos_token_id: the template's sep;
// Qwen2.5-VL's and MiniCPM-V's generation stops on both ChatML entries);
// Hermes-2 adds conversation.py's stop_str. Resolve them to ids with the
// checkpoint's tokenizer; a string the tokenizer lacks is simply not a stop.
inline std::vector<std::string> stop_strings(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::chatml: return {"<|im_end|>", "<|endoftext|>"};
    case ChatTemplate::hermes2: return {"<|im_end|>", "<|endoftext|>"};
    case ChatTemplate::internlm2_chat: return {"<|im_end|>"};
    case ChatTemplate::phi3_chat: return {"<|end|>"};
  }
  return {};
}

// conversation.py's stop_token_ids at the InternVL 2.0 release (dropped at
// HEAD; chat() never used them — it stops on the sep only). They are ids of
// particular tokenizers: Hermes-2's [2, 6, 7, 8] are Yi's (InternVL2-40B),
// internlm2-chat's [2, 92543, 92542] InternLM2's (</s>, <|im_start|>,
// <|im_end|>), phi3-chat's [2, 32000, 32007] Phi-3's (<|endoftext|> 32000,
// <|end|> 32007). Informational: prefer stop_strings through the tokenizer.
inline std::vector<int> conversation_stop_token_ids(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::chatml: return {};
    case ChatTemplate::hermes2: return {2, 6, 7, 8};
    case ChatTemplate::internlm2_chat: return {2, 92543, 92542};
    case ChatTemplate::phi3_chat: return {2, 32000, 32007};
  }
  return {};
}

// The template named by a config.json value ("Hermes-2", "internlm2-chat",
// "phi3-chat"); `file` names the config in the error.
inline ChatTemplate template_from_name(std::string_view name, const std::string& file) {
  if (name == "Hermes-2") return ChatTemplate::hermes2;
  if (name == "internlm2-chat") return ChatTemplate::internlm2_chat;
  if (name == "phi3-chat") return ChatTemplate::phi3_chat;
  throw FormatError(file + ": \"template\": \"" + std::string(name) +
                    "\" is not a chat template tessera knows (known: \"Hermes-2\", \"internlm2-chat\", "
                    "\"phi3-chat\" from InternVL2's conversation.py)");
}

// The template a checkpoint's config.json selects: its "template" key when
// present (InternVL2), else ChatML for model_type qwen2, qwen2_vl, qwen2_5_vl
// and minicpmv. `file` names the config in errors.
inline ChatTemplate template_for(const nlohmann::json& config, const std::string& file) {
  if (!config.is_object()) throw FormatError(file + ": the config is not a JSON object");
  if (const auto it = config.find("template"); it != config.end()) {
    if (!it->is_string()) {
      throw FormatError(file + ": \"template\" must be a string naming a chat template, got " +
                        std::string(it->type_name()));
    }
    return template_from_name(it->get_ref<const std::string&>(), file);
  }
  const auto mt = config.find("model_type");
  if (mt == config.end() || !mt->is_string()) {
    throw FormatError(file + ": no \"template\" key and no string \"model_type\"; cannot choose a chat template");
  }
  const std::string& model_type = mt->get_ref<const std::string&>();
  if (model_type == "qwen2" || model_type == "qwen2_vl" || model_type == "qwen2_5_vl" || model_type == "minicpmv") {
    return ChatTemplate::chatml;
  }
  if (model_type == "internvl_chat") {
    throw FormatError(file + ": \"model_type\": \"internvl_chat\" without a \"template\" key; InternVL2's "
                      "config.json names its conversation template there");
  }
  throw FormatError(file + ": \"model_type\": \"" + model_type +
                    "\" has no chat template in tessera (ChatML for qwen2, qwen2_vl, qwen2_5_vl, minicpmv; "
                    "InternVL2 via \"template\")");
}

// InternVL's chat() takes its system message from config.json's
// "system_message" when the key exists (OpenGVLab/InternVL 2dfc31c, after the
// 2.0 release), else the template's default. Returns the key's value, or
// nullopt where there is none; pass it as render()'s `system`.
inline std::optional<std::string> system_message_for(const nlohmann::json& config, const std::string& file) {
  if (!config.is_object()) return std::nullopt;
  const auto it = config.find("system_message");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) {
    throw FormatError(file + ": \"system_message\" must be a string, got " + std::string(it->type_name()));
  }
  return it->get<std::string>();
}

// ---- image placeholders --------------------------------------------------------------------

// InternVL2's chat(): a question with images but no "<image>" gets one in front.
inline std::string internvl_image_question(std::string_view question) {
  if (question.find("<image>") != std::string_view::npos) return std::string(question);
  return "<image>\n" + std::string(question);
}

// The model card's multi-image question: "Image-1: <image>\nImage-2: <image>\n" + question.
inline std::string internvl_multi_image_question(std::size_t images, std::string_view question) {
  std::string out;
  for (std::size_t i = 1; i <= images; ++i) out.append("Image-").append(std::to_string(i)).append(": <image>\n");
  return out.append(question);
}

// The model card's video question: "Frame1: <image>\nFrame2: <image>\n" + question.
inline std::string internvl_video_question(std::size_t frames, std::string_view question) {
  std::string out;
  for (std::size_t i = 1; i <= frames; ++i) out.append("Frame").append(std::to_string(i)).append(": <image>\n");
  return out.append(question);
}

// "<img>" + "<IMG_CONTEXT>" × num_image_token × num_patches + "</img>"
// (num_image_token is 256 for every InternVL2: (448/14)² × 0.5²).
inline std::string internvl_image_tokens(std::size_t num_image_token, std::size_t num_patches) {
  constexpr std::string_view kContext = "<IMG_CONTEXT>";
  std::string out;
  out.reserve(11 + kContext.size() * num_image_token * num_patches);
  out.append("<img>");
  for (std::size_t i = 0; i < num_image_token * num_patches; ++i) out.append(kContext);
  return out.append("</img>");
}

// chat()'s expansion of a rendered prompt: the k-th "<image>" anywhere in the
// prompt (system message and earlier turns included, left to right) becomes
// internvl_image_tokens(num_image_token, num_patches_list[k]). Placeholders
// beyond the list stay as text, as in chat(); fewer placeholders than images
// is refused (chat() would feed more image features than context tokens).
inline std::string internvl_expand_images(std::string_view prompt, std::span<const std::size_t> num_patches_list,
                                          std::size_t num_image_token) {
  constexpr std::string_view kImage = "<image>";
  std::string out;
  std::size_t pos = 0;
  for (std::size_t k = 0; k < num_patches_list.size(); ++k) {
    const std::size_t at = prompt.find(kImage, pos);
    if (at == std::string_view::npos) {
      throw ValueError("InternVL prompt: " + std::to_string(num_patches_list.size()) + " images but only " +
                       std::to_string(k) + " \"<image>\" placeholders in the prompt");
    }
    out.append(prompt.substr(pos, at - pos)).append(internvl_image_tokens(num_image_token, num_patches_list[k]));
    pos = at + kImage.size();
  }
  return out.append(prompt.substr(pos));
}

// MiniCPM-V 2.6's chat(): each image is "(<image>./</image>)", the parts
// (images first, then the text) joined with "\n". The processor expands the
// markers (models/minicpm_v_processor.hpp).
inline std::string minicpmv_user_content(std::size_t images, std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < images; ++i) out.append("(<image>./</image>)\n");
  return out.append(text);
}

// Qwen2.5-VL's chat_template.json for a user message of images, then videos,
// then text: "<|vision_start|><|image_pad|><|vision_end|>" per image,
// "<|vision_start|><|video_pad|><|vision_end|>" per video, nothing between
// items. The processor expands the pads (models/qwen2_5_vl_processor.hpp).
inline std::string qwen2_vl_user_content(std::size_t images, std::size_t videos, std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < images; ++i) out.append("<|vision_start|><|image_pad|><|vision_end|>");
  for (std::size_t i = 0; i < videos; ++i) out.append("<|vision_start|><|video_pad|><|vision_end|>");
  return out.append(text);
}

}  // namespace tessera::generate
