// Tokenizers built from a GGUF file's vocabulary: byte-level BPE (GPT-2 style, with the
// pre-tokenizers of SmolLM2 and Qwen2) and SentencePiece-style score-based merging with byte
// fallback (Llama / Gemma). Ids match llama.cpp's tokenizer on the same file.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace flashlm {

class GgufFile;

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GgufFile& file);

  // Text to token ids. With parse_special, control tokens written in the text (such as
  // <|im_start|>) become their ids; user-defined tokens always do, as in llama.cpp.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes token `id` stands for (empty for control tokens).
  std::string token_piece(int32_t id) const;
  const std::string& token_text(int32_t id) const { return tokens_[id]; }

  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  // An id that stands for no token: padding of the vocabulary to the model's rows (type
  // UNUSED, such as Qwen2.5's "[PAD151665]" and on), or outside the vocabulary.
  bool is_unused(int32_t id) const;
  // The most bytes of text one token stands for: a text of n bytes makes at least
  // n / longest_token_bytes() tokens, which bounds a prompt's length before tokenizing it.
  size_t longest_token_bytes() const { return longest_token_bytes_; }
  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  // Tokens that end a reply: eos, eot and the end-of-turn markers of chat formats.
  bool is_end_of_generation(int32_t id) const { return end_of_generation_.count(id) != 0; }

  const std::string& architecture() const { return architecture_; }
  const std::string& chat_template() const { return chat_template_; }

 private:
  enum class Kind { BytePairs, SentencePiece };
  enum class Pre { Gpt2, SmolLM, Qwen2 };

  void encode_fragment(std::string_view text, bool first_fragment, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  int32_t find(std::string_view text) const;

  Kind kind_ = Kind::BytePairs;
  Pre pre_ = Pre::Gpt2;
  std::vector<std::string> tokens_;
  std::vector<int32_t> types_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;
  // Byte-level BPE: the merge of the adjacent tokens (left id << 32 | right id), with its rank
  // (lower merges first) and the token it makes; and the token of each byte's printable symbol.
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_ids_[256] = {};
  // The special tokens' texts as a trie: a node's children by (node << 8 | next byte), and the
  // token each node completes (-1: none), so that the longest special token at a position is
  // found in as many steps as it has bytes, however many special tokens the vocabulary has.
  std::unordered_map<uint64_t, int32_t> special_edges_;
  std::vector<int32_t> special_ends_{-1};
  std::unordered_set<int32_t> end_of_generation_;
  int32_t bos_ = -1, eos_ = -1, unknown_ = -1;
  size_t longest_token_bytes_ = 1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;
  std::string architecture_;
  std::string chat_template_;
};

// Emits decoded text as tokens stream in, holding back a UTF-8 character until all its bytes
// have arrived (one emoji can span several tokens).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

// Formats a conversation the way the model was trained: ChatML (<|im_start|>role ...
// <|im_end|>, SmolLM2 and Qwen2.5, with the default system message their templates add) or
// Gemma (<start_of_turn>user ... <end_of_turn>, system merged into the first user turn).
// Models whose template is neither get ChatML.
std::string apply_chat_template(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                bool add_generation_prompt);

}  // namespace flashlm
