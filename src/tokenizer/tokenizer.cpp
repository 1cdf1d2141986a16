#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <queue>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenizer/unicode.h"

namespace flashlm {
namespace {

// Token types as llama.cpp's converters write them.
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5,
                  kByte = 6;

// GPT-2's reversible map from bytes to printable code points: printable bytes stand for
// themselves, the rest, in byte order, for U+0100 onwards.
struct ByteMap {
  std::array<uint32_t, 256> to_codepoint{};
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_codepoint[b] = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[to_codepoint[b]] = static_cast<uint8_t>(b);
    }
  }
};
uint64_t pair_key(int32_t left, int32_t right) {
  return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
}

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

struct Codepoints {
  std::vector<uint32_t> cp;
  std::vector<size_t> offset;  // byte offset of each code point; offset[n] = text size
  explicit Codepoints(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
      offset.push_back(i);
      cp.push_back(next_codepoint(s, i));
    }
    offset.push_back(s.size());
  }
  size_t size() const { return cp.size(); }
};

bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

// Splits text into the words of a pre-tokenizer pattern, written out by hand:
//   GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Qwen2:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
//           | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Alternatives are tried in order at each position, as a regex engine does.
class WordSplitter {
 public:
  WordSplitter(std::string_view text, bool qwen2) : text_(text), c_(text), qwen2_(qwen2) {}

  template <typename Emit>
  void split(Emit emit) {
    const size_t n = c_.size();
    for (size_t i = 0; i < n;) {
      const size_t end = match(i);
      emit(text_.substr(c_.offset[i], c_.offset[end] - c_.offset[i]));
      i = end;
    }
  }

 private:
  bool L(size_t k) const { return k < c_.size() && is_letter(c_.cp[k]); }
  bool N(size_t k) const { return k < c_.size() && is_number(c_.cp[k]); }
  bool S(size_t k) const { return k < c_.size() && is_space(c_.cp[k]); }
  bool other(size_t k) const { return k < c_.size() && !S(k) && !L(k) && !N(k); }
  uint32_t at(size_t k) const { return k < c_.size() ? c_.cp[k] : 0; }

  size_t contraction(size_t i) const {
    if (at(i) != '\'') return 0;
    auto lower = [&](size_t k) {
      const uint32_t c = at(k);
      return qwen2_ && c >= 'A' && c <= 'Z' ? c + 32 : c;
    };
    const uint32_t a = lower(i + 1), b = lower(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    return 0;
  }

  size_t run(size_t k, bool (WordSplitter::*cls)(size_t) const) const {
    while ((this->*cls)(k)) ++k;
    return k;
  }

  size_t whitespace(size_t i) const {
    const size_t j = run(i, &WordSplitter::S);
    if (j == c_.size() || j - i == 1) return j;  // \s+ (end of text, or a lone space)
    return j - 1;                                 // \s+(?!\S): leave one for the next word
  }

  size_t match(size_t i) const {
    if (size_t e = contraction(i)) return e;
    if (!qwen2_) {
      const size_t j = at(i) == ' ' ? i + 1 : i;
      if (L(j)) return run(j, &WordSplitter::L);
      if (N(j)) return run(j, &WordSplitter::N);
      if (other(j)) return run(j, &WordSplitter::other);
      return whitespace(i);
    }
    if (L(i)) return run(i, &WordSplitter::L);
    if (!is_newline(at(i)) && !L(i) && !N(i) && L(i + 1)) return run(i + 1, &WordSplitter::L);
    if (N(i)) return i + 1;
    {
      const size_t j = at(i) == ' ' && other(i + 1) ? i + 1 : i;
      if (other(j)) {
        size_t k = run(j, &WordSplitter::other);
        while (is_newline(at(k))) ++k;
        return k;
      }
    }
    const size_t j = run(i, &WordSplitter::S);
    for (size_t k = j; k > i; --k) {
      if (is_newline(at(k - 1))) return k;  // \s*[\r\n]+
    }
    return whitespace(i);
  }

  std::string_view text_;
  Codepoints c_;
  bool qwen2_;
};

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model == "gpt2") {
    t.kind_ = Kind::BytePairs;
    const std::string pre = f.find_string("tokenizer.ggml.pre").value_or("default");
    if (pre == "qwen2") {
      t.pre_ = Pre::Qwen2;
    } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
      t.pre_ = Pre::SmolLM;
    } else if (pre == "gpt-2" || pre == "gpt2" || pre == "default") {
      t.pre_ = Pre::Gpt2;
    } else {
      fail("{}: the BPE pre-tokenizer '{}' is not supported yet (supported: gpt2, smollm, qwen2)",
           f.path(), pre);
    }
  } else if (model == "llama") {
    t.kind_ = Kind::SentencePiece;
  } else {
    fail("{}: tokenizer model '{}' is not supported yet (supported: gpt2 BPE, llama "
         "SentencePiece)",
         f.path(), model);
  }
  t.tokens_ = f.get_string_array("tokenizer.ggml.tokens");
  const int64_t n = static_cast<int64_t>(t.tokens_.size());
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t v : f.get_int_array("tokenizer.ggml.token_type")) {
      t.types_.push_back(static_cast<int32_t>(v));
    }
  }
  if (static_cast<int64_t>(t.types_.size()) != n) t.types_.assign(n, kNormal);
  if (t.kind_ == Kind::SentencePiece) {
    t.scores_ = f.get_float_array("tokenizer.ggml.scores");
    if (static_cast<int64_t>(t.scores_.size()) != n) {
      fail("{}: {} token scores for {} tokens", f.path(), t.scores_.size(), n);
    }
  }
  t.ids_.reserve(n);
  // A token's text is never shorter than the bytes it stands for (GPT-2's symbols and
  // SentencePiece's U+2581 take one or more bytes for one; byte tokens "<0x41>" six for one).
  for (const std::string& token : t.tokens_) {
    t.longest_token_bytes_ = std::max(t.longest_token_bytes_, token.size());
  }
  for (int64_t i = 0; i < n; ++i) t.ids_.emplace(t.tokens_[i], static_cast<int32_t>(i));
  if (t.kind_ == Kind::BytePairs) {
    for (int b = 0; b < 256; ++b) {
      std::string symbol;
      append_utf8(symbol, byte_map().to_codepoint[b]);
      t.byte_ids_[b] = t.find(symbol);
    }
    // A merge "A B" joins tokens A and B into token AB; a merge whose parts or result are not
    // in the vocabulary could never apply to tokens and is left out.
    const auto& merges = f.get_string_array("tokenizer.ggml.merges");
    t.merges_.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const size_t space = m.find(' ', 1);
      if (space == std::string::npos) continue;
      const int32_t left = t.find(std::string_view(m).substr(0, space));
      const int32_t right = t.find(std::string_view(m).substr(space + 1));
      const int32_t joined = t.find(m.substr(0, space) + m.substr(space + 1));
      if (left < 0 || right < 0 || joined < 0) continue;
      t.merges_.emplace(pair_key(left, right), Merge{static_cast<int32_t>(r), joined});
    }
  }
  auto id_or = [&](const char* key, int32_t fallback) {
    const auto v = f.find_uint(key);
    if (!v) return fallback;
    if (*v >= static_cast<uint64_t>(n)) fail("{}: {} = {} is outside the vocabulary", f.path(), key, *v);
    return static_cast<int32_t>(*v);
  };
  t.bos_ = id_or("tokenizer.ggml.bos_token_id", -1);
  t.eos_ = id_or("tokenizer.ggml.eos_token_id", -1);
  t.unknown_ = id_or("tokenizer.ggml.unknown_token_id", -1);
  if (f.has("tokenizer.ggml.add_bos_token")) t.add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token");
  if (t.add_bos_ && t.bos_ < 0) fail("{}: the model adds a BOS token but names none", f.path());
  if (f.has("tokenizer.ggml.add_space_prefix")) {
    t.add_space_prefix_ = f.get_bool("tokenizer.ggml.add_space_prefix");
  }
  t.architecture_ = f.find_string("general.architecture").value_or("");
  t.chat_template_ = f.find_string("tokenizer.chat_template").value_or("");

  // llama.cpp treats these texts as control tokens, whatever type the file gives them, and
  // ends generation at them; without this, "</s>" in Qwen2.5's vocabulary (a normal token there)
  // or Gemma 3's (user-defined) would tokenize differently and not stop generation.
  static constexpr const char* kEndMarkers[] = {
      "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
      "<EOT>", "_<EOT>", "</s>", "<end_of_utterance>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>",
      "<|repo_name|>", "<fim-repo>", "<reponame>", "<|file_sep|>", "<file_sep>"};
  static constexpr const char* kFimMarkers[] = {
      "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<|fim_suffix|>", "<fim-suffix>",
      "<fim_suffix>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>"};
  for (const char* marker : kEndMarkers) {
    if (int32_t id = t.find(marker); id >= 0) {
      t.types_[id] = kControl;
      t.end_of_generation_.insert(id);
    }
  }
  for (const char* marker : kFimMarkers) {
    if (int32_t id = t.find(marker); id >= 0) t.types_[id] = kControl;
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t type = t.types_[i];
    if ((type != kControl && type != kUserDefined && type != kUnknown) || t.tokens_[i].empty()) {
      continue;
    }
    int32_t node = 0;
    for (char ch : t.tokens_[i]) {
      const uint64_t edge = static_cast<uint64_t>(node) << 8 | static_cast<uint8_t>(ch);
      auto [it, added] = t.special_edges_.emplace(edge, static_cast<int32_t>(t.special_ends_.size()));
      if (added) t.special_ends_.push_back(-1);
      node = it->second;
    }
    if (t.special_ends_[node] < 0) t.special_ends_[node] = static_cast<int32_t>(i);
  }
  if (t.eos_ >= 0) t.end_of_generation_.insert(t.eos_);
  if (auto eot = f.find_uint("tokenizer.ggml.eot_token_id"); eot && *eot < static_cast<uint64_t>(n)) {
    t.end_of_generation_.insert(static_cast<int32_t>(*eot));
  }
  return t;
}

int32_t Tokenizer::find(std::string_view text) const {
  auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  // Cut the text at special tokens (longest match first), then tokenize the pieces between.
  size_t start = 0;
  bool first = true;
  for (size_t i = 0; i < text.size();) {
    int32_t special = -1;
    for (size_t k = i, node = 0; k < text.size(); ++k) {
      auto it = special_edges_.find(static_cast<uint64_t>(node) << 8 | static_cast<uint8_t>(text[k]));
      if (it == special_edges_.end()) break;
      node = static_cast<size_t>(it->second);
      const int32_t id = special_ends_[node];
      if (id >= 0 && (parse_special || types_[id] == kUserDefined)) special = id;
    }
    if (special < 0) {
      ++i;
      continue;
    }
    if (i > start) encode_fragment(text.substr(start, i - start), first, out);
    first = false;
    out.push_back(special);
    i += tokens_[special].size();
    start = i;
  }
  if (start < text.size()) encode_fragment(text.substr(start), first, out);
  return out;
}

void Tokenizer::encode_fragment(std::string_view text, bool first_fragment,
                                std::vector<int32_t>& out) const {
  if (kind_ == Kind::SentencePiece) {
    std::string normalized = add_space_prefix_ && first_fragment ? " " : "";
    normalized += text;
    std::string escaped;
    for (char c : normalized) {
      if (c == ' ') {
        escaped += "\xE2\x96\x81";  // U+2581, SentencePiece's visible space
      } else {
        escaped += c;
      }
    }
    encode_spm(escaped, out);
    return;
  }
  auto word = [&](std::string_view w) { encode_bpe_word(w, out); };
  if (pre_ == Pre::SmolLM) {
    // Every digit is a word of its own; the pieces between go through the GPT-2 pattern.
    const Codepoints c(text);
    size_t piece = 0;
    for (size_t k = 0; k <= c.size(); ++k) {
      if (k < c.size() && !is_number(c.cp[k])) continue;
      if (k > piece) {
        WordSplitter(text.substr(c.offset[piece], c.offset[k] - c.offset[piece]), false).split(word);
      }
      if (k < c.size()) word(text.substr(c.offset[k], c.offset[k + 1] - c.offset[k]));
      piece = k + 1;
    }
    return;
  }
  WordSplitter(text, pre_ == Pre::Qwen2).split(word);
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  // Bytes to the tokens of GPT-2's printable code points, one symbol each, in a linked list;
  // then merge the adjacent pair with the lowest merge rank (leftmost on ties) until no pair
  // has one. Candidate pairs wait in a heap and are checked when they come out (an earlier
  // merge may have changed either side), so a word of n bytes takes O(n log n).
  struct Symbol {
    int32_t id;  // -1: a byte without a token, or merged into its left neighbour (unlinked)
    int prev, next;
  };
  const int n = static_cast<int>(word.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) {
    symbols[k] = {byte_ids_[static_cast<uint8_t>(word[k])], k - 1, k + 1 < n ? k + 1 : -1};
  }
  struct Candidate {
    int32_t rank;
    int left, right;
    int32_t left_id, right_id;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const int32_t a = symbols[left].id, b = symbols[right].id;
    if (a < 0 || b < 0) return;
    auto it = merges_.find(pair_key(a, b));
    if (it != merges_.end()) queue.push({it->second.rank, left, right, a, b});
  };
  for (int k = 0; k + 1 < n; ++k) consider(k, k + 1);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    if (left.id != c.left_id || left.next != c.right || symbols[c.right].id != c.right_id) {
      continue;  // stale: a merge since it was queued changed one of its sides
    }
    Symbol& right = symbols[c.right];
    left.id = merges_.at(pair_key(c.left_id, c.right_id)).id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    right.id = -1;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }
  for (int k = 0; k >= 0 && k < n; k = symbols[k].next) {
    if (symbols[k].id >= 0) {
      out.push_back(symbols[k].id);
    } else if (unknown_ >= 0) {
      // A byte with no token (a byte-level vocabulary always has all 256): the unknown token,
      // so that the loss stays visible rather than silently dropping text.
      out.push_back(unknown_);
    }
  }
}

void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  // Symbols are UTF-8 characters in a linked list; repeatedly merge the adjacent pair whose
  // concatenation is the highest-scoring vocabulary entry (leftmost on ties).
  struct Symbol {
    size_t begin, length;
    int prev, next;
  };
  std::vector<Symbol> symbols;
  for (size_t i = 0; i < text.size();) {
    const size_t len = std::min(utf8_length(static_cast<uint8_t>(text[i])), text.size() - i);
    symbols.push_back({i, len, static_cast<int>(symbols.size()) - 1,
                       static_cast<int>(symbols.size()) + 1});
    i += len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  struct Bigram {
    int left, right;
    float score;
    size_t length;
  };
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t length = symbols[left].length + symbols[right].length;
    const int32_t id = find(text.substr(symbols[left].begin, length));
    if (id >= 0) queue.push({left, right, scores_[id], length});
  };
  for (size_t k = 1; k < symbols.size(); ++k) try_add(static_cast<int>(k) - 1, static_cast<int>(k));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    // Skip bigrams made stale by an earlier merge.
    if (left.length == 0 || right.length == 0 || left.length + right.length != b.length) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }
  for (int k = 0; k >= 0; k = symbols[k].next) {
    const std::string_view piece = text.substr(symbols[k].begin, symbols[k].length);
    const int32_t id = find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (char ch : piece) {  // byte fallback: <0xXX>
      const int32_t byte_id = find(fmt::format("<0x{:02X}>", static_cast<uint8_t>(ch)));
      if (byte_id >= 0) {
        out.push_back(byte_id);
      } else if (unknown_ >= 0) {
        out.push_back(unknown_);
      }
    }
  }
}

bool Tokenizer::is_unused(int32_t id) const {
  return id < 0 || id >= vocab_size() || types_[id] == kUnused;
}

std::string Tokenizer::token_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} is outside the vocabulary", id);
  const std::string& text = tokens_[id];
  const int32_t type = types_[id];
  if (type == kControl || type == kUnknown) return "";
  if (type == kUserDefined) return text;
  if (kind_ == Kind::SentencePiece) {
    // Byte tokens read <0xHH>; one spelled otherwise (a corrupt vocabulary) decodes as text.
    unsigned byte = 0;
    if (type == kByte && text.size() == 6 &&
        std::from_chars(text.data() + 3, text.data() + 5, byte, 16).ptr == text.data() + 5) {
      return std::string(1, static_cast<char>(byte));
    }
    std::string out;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, 3, "\xE2\x96\x81") == 0) {
        out += ' ';
        i += 3;
      } else {
        out += text[i++];
      }
    }
    return out;
  }
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const uint32_t cp = next_codepoint(text, i);
    auto it = byte_map().to_byte.find(cp);
    if (it != byte_map().to_byte.end()) {
      out += static_cast<char>(it->second);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += token_piece(id);
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_piece(id);
  // Emit everything up to the last complete UTF-8 character.
  size_t complete = pending_.size();
  for (size_t back = 1; back <= std::min<size_t>(4, pending_.size()); ++back) {
    const auto b = static_cast<uint8_t>(pending_[pending_.size() - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte
    if (utf8_length(b) > back) complete = pending_.size() - back;
    break;
  }
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

namespace {

// The default system message a ChatML template adds when the conversation has none: the
// literal text between "<|im_start|>system" + newline and "<|im_end|>" in the template.
std::string default_system_message(const std::string& tmpl) {
  const std::string open = "<|im_start|>system";
  for (size_t at = tmpl.find(open); at != std::string::npos; at = tmpl.find(open, at + 1)) {
    size_t begin = at + open.size();
    if (tmpl.compare(begin, 2, "\\n") == 0) {
      begin += 2;
    } else if (tmpl.compare(begin, 1, "\n") == 0) {
      begin += 1;
    } else {
      continue;
    }
    const size_t end = tmpl.find("<|im_end|>", begin);
    if (end == std::string::npos) continue;
    const std::string text = tmpl.substr(begin, end - begin);
    if (text.find_first_of("'\"{}+") == std::string::npos) return text;
  }
  return "";
}

}  // namespace

std::string apply_chat_template(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                bool add_generation_prompt) {
  const std::string& tmpl = tokenizer.chat_template();
  const bool gemma = tmpl.find("<start_of_turn>") != std::string::npos ||
                     (tmpl.empty() && tokenizer.architecture().rfind("gemma", 0) == 0);
  std::string out;
  if (gemma) {
    std::string system;
    for (const ChatMessage& m : messages) {
      if (m.role == "system") {
        system += m.content + "\n\n";
        continue;
      }
      const std::string role = m.role == "assistant" ? "model" : m.role;
      out += "<start_of_turn>" + role + "\n" + (role == "user" ? system : "") + m.content +
             "<end_of_turn>\n";
      if (role == "user") system.clear();
    }
    if (add_generation_prompt) out += "<start_of_turn>model\n";
    return out;
  }
  if (messages.empty() || messages.front().role != "system") {
    const std::string system = default_system_message(tmpl);
    if (!system.empty()) out += "<|im_start|>system\n" + system + "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace flashlm
