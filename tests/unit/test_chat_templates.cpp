// Tests of generate/chat.hpp against tests/fixtures/chat_templates/ (written by
// tools/fixtures/make_chat_template_fixtures.py): for every case and checkpoint
// family, the prompt tessera renders (with the family's image placeholders and,
// for InternVL2, chat()'s image expansion) equals the text the generator
// rendered from the reference rules, and its ids through tessera's tokenizer
// equal the ids the `tokenizers` library gave for that text; plus template
// selection from config.json and its errors, stop strings and the API's edges.
#include <tessera/generate/chat.hpp>
#include <tessera/tokenizer/bpe.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "fixtures_dir.hpp"

namespace tessera::testing {
namespace {

using generate::ChatMessage;
using generate::ChatTemplate;

std::filesystem::path fixture(const std::string& name) {
  return tessera::testing::fixtures_dir() / "chat_templates" / name;
}

const nlohmann::json& reference() {
  static const nlohmann::json ref = [] {
    std::ifstream in(fixture("reference.json"));
    std::stringstream ss;
    ss << in.rdbuf();
    return nlohmann::json::parse(ss.str());
  }();
  return ref;
}

const tokenizer::Tokenizer& test_tokenizer() {
  static const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_file(fixture("tokenizer.json").string());
  return tok;
}

ChatTemplate template_of(const std::string& name) {
  return name == "chatml" ? ChatTemplate::chatml : generate::template_from_name(name, "reference.json");
}

// A user turn's content as the family writes it.
std::string user_content(const std::string& family, const nlohmann::json& m) {
  const std::string text = m.at("text").get<std::string>();
  const std::size_t images = m.at("images").get<std::size_t>();
  const std::string kind = m.at("kind").get<std::string>();
  if (family == "qwen2_5_vl") {
    if (kind == "video" && images > 0) return generate::qwen2_vl_user_content(0, 1, text);
    return generate::qwen2_vl_user_content(images, 0, text);
  }
  if (family == "minicpm_v_2_6") return generate::minicpmv_user_content(images, text);
  if (images == 0) return text;
  if (kind == "multi") return generate::internvl_multi_image_question(images, text);
  if (kind == "video") return generate::internvl_video_question(images, text);
  return generate::internvl_image_question(text);
}

struct Rendered {
  std::string rendered;  // the template's output
  std::string text;      // after InternVL's image expansion
};

Rendered render_case(const std::string& family, const nlohmann::json& c) {
  const auto& ref = reference();
  const ChatTemplate t = template_of(ref.at("families").at(family).at("template").get<std::string>());
  std::vector<ChatMessage> messages;
  for (const auto& m : c.at("messages")) {
    const std::string role = m.at("role").get<std::string>();
    messages.push_back({role, role == "user" ? user_content(family, m) : m.at("text").get<std::string>()});
  }
  std::optional<std::string_view> system;
  std::string system_text;
  if (!c.at("system").is_null()) {
    system_text = c.at("system").get<std::string>();
    system = system_text;
  }
  Rendered r;
  r.rendered = generate::render(t, messages, c.at("add_generation_prompt").get<bool>(), system);
  r.text = r.rendered;
  if (t != ChatTemplate::chatml) {
    const auto patches = c.at("num_patches").get<std::vector<std::size_t>>();
    r.text = generate::internvl_expand_images(r.rendered, patches, ref.at("num_image_token").get<std::size_t>());
  }
  return r;
}

TEST(ChatTemplates, FixtureCoversEveryFamilyAndTemplate) {
  const auto& ref = reference();
  EXPECT_GE(ref.at("cases").size(), 10u);
  std::set<std::string> templates;
  for (const auto& [family, f] : ref.at("families").items()) templates.insert(f.at("template").get<std::string>());
  EXPECT_EQ(templates, (std::set<std::string>{"chatml", "Hermes-2", "internlm2-chat", "phi3-chat"}));
}

TEST(ChatTemplates, RenderedTextEqualsReferenceRules) {
  for (const auto& c : reference().at("cases")) {
    for (const auto& [family, expected] : c.at("families").items()) {
      SCOPED_TRACE(c.at("name").get<std::string>() + " / " + family);
      const Rendered r = render_case(family, c);
      EXPECT_EQ(r.rendered, expected.at("rendered").get<std::string>());
      EXPECT_EQ(r.text, expected.at("text").get<std::string>());
    }
  }
}

TEST(ChatTemplates, IdsEqualTokenizersLibrary) {
  const auto& tok = test_tokenizer();
  for (const auto& c : reference().at("cases")) {
    for (const auto& [family, expected] : c.at("families").items()) {
      SCOPED_TRACE(c.at("name").get<std::string>() + " / " + family);
      const auto ids = tok.encode(render_case(family, c).text);
      const auto want = expected.at("ids").get<std::vector<tokenizer::TokenId>>();
      EXPECT_EQ(ids, want);
    }
  }
}

// Where the jinja rendering equals the reference rules, tessera equals both;
// where it differs, the fixture says how (and tessera follows the reference).
TEST(ChatTemplates, JinjaDifferencesAreDocumented) {
  std::size_t equal = 0, differ = 0;
  for (const auto& c : reference().at("cases")) {
    for (const auto& [family, expected] : c.at("families").items()) {
      SCOPED_TRACE(c.at("name").get<std::string>() + " / " + family);
      const auto& jinja = expected.at("jinja");
      const std::string rendered = render_case(family, c).rendered;
      if (jinja.at("equal").get<bool>()) {
        EXPECT_EQ(rendered, jinja.at("text").get<std::string>());
        ++equal;
      } else {
        EXPECT_NE(rendered, jinja.at("text").get<std::string>());
        EXPECT_FALSE(jinja.at("differences").empty());
        ++differ;
      }
    }
  }
  EXPECT_GT(equal, 0u);  // ChatML families agree with their jinja
  EXPECT_GT(differ, 0u);  // InternVL's jinja does not match chat()
}

TEST(ChatTemplates, SelectionFromConfig) {
  using nlohmann::json;
  EXPECT_EQ(generate::template_for(json{{"model_type", "internvl_chat"}, {"template", "Hermes-2"}}, "c.json"),
            ChatTemplate::hermes2);
  EXPECT_EQ(generate::template_for(json{{"template", "internlm2-chat"}}, "c.json"), ChatTemplate::internlm2_chat);
  EXPECT_EQ(generate::template_for(json{{"template", "phi3-chat"}}, "c.json"), ChatTemplate::phi3_chat);
  for (const char* mt : {"qwen2", "qwen2_vl", "qwen2_5_vl", "minicpmv"}) {
    EXPECT_EQ(generate::template_for(json{{"model_type", mt}}, "c.json"), ChatTemplate::chatml) << mt;
  }
  for (const auto& [family, f] : reference().at("families").items()) {
    const std::string name = f.at("template").get<std::string>();
    if (name != "chatml") {
      EXPECT_EQ(generate::template_name(generate::template_for(json{{"template", name}}, "c.json")), name);
    }
  }
}

void expect_format_error(const nlohmann::json& config, const std::string& needle) {
  try {
    (void)generate::template_for(config, "ckpt/config.json");
    ADD_FAILURE() << "accepted " << config.dump();
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ckpt/config.json"), std::string::npos) << what;
    EXPECT_NE(what.find(needle), std::string::npos) << what;
  }
}

TEST(ChatTemplates, UnknownTemplatesAreRefusedNamingKeyAndValue) {
  using nlohmann::json;
  expect_format_error(json{{"model_type", "internvl_chat"}, {"template", "internvl2_5"}},
                      "\"template\": \"internvl2_5\" is not a chat template tessera knows");
  expect_format_error(json{{"template", "hermes-2"}}, "\"template\": \"hermes-2\"");  // case matters
  expect_format_error(json{{"template", 3}}, "\"template\" must be a string");
  expect_format_error(json{{"model_type", "internvl_chat"}}, "without a \"template\" key");
  expect_format_error(json{{"model_type", "llava"}}, "\"model_type\": \"llava\" has no chat template");
  expect_format_error(json::object(), "no \"template\" key and no string \"model_type\"");
  expect_format_error(json::array(), "not a JSON object");
}

TEST(ChatTemplates, SystemMessageFromConfig) {
  using nlohmann::json;
  EXPECT_EQ(generate::system_message_for(json{{"template", "Hermes-2"}}, "c.json"), std::nullopt);
  EXPECT_EQ(generate::system_message_for(json{{"system_message", "X"}}, "c.json"), std::optional<std::string>("X"));
  EXPECT_THROW((void)generate::system_message_for(json{{"system_message", 1}}, "c.json"), FormatError);
}

TEST(ChatTemplates, StopStringsAreSpecialTokensOfTheFixture) {
  const auto& ref = reference();
  const auto& tok = test_tokenizer();
  for (const auto& [name, t] : ref.at("templates").items()) {
    const ChatTemplate tmpl = template_of(name);
    EXPECT_EQ(generate::stop_strings(tmpl), t.at("stop_strings").get<std::vector<std::string>>()) << name;
    EXPECT_EQ(generate::conversation_stop_token_ids(tmpl),
              t.at("conversation_stop_token_ids").get<std::vector<int>>())
        << name;
    EXPECT_EQ(generate::default_system_prompt(tmpl), t.at("default_system").get<std::string>()) << name;
    for (const auto& s : generate::stop_strings(tmpl)) {
      const auto ids = tok.encode(s);
      ASSERT_EQ(ids.size(), 1u) << s;
      EXPECT_TRUE(tok.is_special(ids[0])) << s;
    }
  }
}

TEST(ChatTemplates, InternVLEdges) {
  const std::vector<ChatMessage> none;
  // conversation.py always writes the system turn, even with no messages.
  EXPECT_EQ(generate::render(ChatTemplate::phi3_chat, none, true, "S"), "<|system|>\nS<|end|><|assistant|>\n");
  // An empty message is an open turn (role prefix only).
  const std::vector<ChatMessage> open{{"user", "Q"}, {"assistant", ""}};
  EXPECT_EQ(generate::render(ChatTemplate::internlm2_chat, open, false, "S"),
            "<|im_start|>system\nS<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n");
  const std::vector<ChatMessage> tool{{"user", "Q"}, {"tool", "x"}};
  EXPECT_THROW((void)generate::render(ChatTemplate::hermes2, tool, true), ValueError);
  const std::vector<ChatMessage> sys{{"system", "A"}, {"user", "Q"}};
  EXPECT_THROW((void)generate::render(ChatTemplate::hermes2, sys, true, "B"), ValueError);
  EXPECT_THROW((void)generate::render(ChatTemplate::chatml, sys, true, "B"), ValueError);
  // Conversation overload.
  generate::Conversation conv{std::string("S"), {{"user", "Q"}}};
  EXPECT_EQ(generate::render(ChatTemplate::chatml, conv, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
  // ChatML keeps apply_chat_template's behaviour for an empty conversation.
  EXPECT_EQ(generate::render(ChatTemplate::chatml, none, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplates, InternVLImageExpansion) {
  EXPECT_EQ(generate::internvl_image_tokens(2, 2), "<img><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT></img>");
  EXPECT_EQ(generate::internvl_image_question("<image>\nQ"), "<image>\nQ");
  EXPECT_EQ(generate::internvl_image_question("Q"), "<image>\nQ");
  EXPECT_EQ(generate::internvl_multi_image_question(2, "Q"), "Image-1: <image>\nImage-2: <image>\nQ");
  EXPECT_EQ(generate::internvl_video_question(2, "Q"), "Frame1: <image>\nFrame2: <image>\nQ");
  const std::vector<std::size_t> patches{1, 2};
  EXPECT_EQ(generate::internvl_expand_images("a<image>b<image>c<image>", patches, 1),
            "a<img><IMG_CONTEXT></img>b<img><IMG_CONTEXT><IMG_CONTEXT></img>c<image>");
  EXPECT_THROW((void)generate::internvl_expand_images("a<image>b", patches, 1), ValueError);
  EXPECT_EQ(generate::internvl_image_tokens(256, 1).size(), 5 + 256 * 13 + 6);
}

}  // namespace
}  // namespace tessera::testing
