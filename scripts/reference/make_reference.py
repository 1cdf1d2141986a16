#!/usr/bin/env python3
"""Makes the llama.cpp reference vectors that tests/reference_test.cpp checks flashlm against.

For each model it writes tests/data/reference/<model>.json with
  - tokenizer: token ids of a varied text (with and without special-token parsing),
  - next_token: the top-5 next-token ids and logits after a few prompts,
  - greedy: 64-token greedy continuations (stopping early at an end-of-generation token),
  - perplexity: llama-perplexity's figure over the first chunks of data/text/eval.txt.
Only small vectors are stored, so CI never needs llama.cpp.

Needs llama-cpp-python (pip install llama-cpp-python). Run from the repository root:
  python3 scripts/reference/make_reference.py [--models NAME ...]
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from llama_cpp_plain import Llama, llama_cpp  # plain CPU buffers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
]

# Exercises the pre-tokenizers and byte fallback: English, code, digit runs, accents, CJK,
# emoji (multi-codepoint too), whitespace runs, tabs, newlines, and special-token text.
TOKENIZER_TEXT = (
    "Hello world! It's a test, isn't it? We'll see what they've done.\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)  # recursion\n\n"
    "Numbers: 3.14159, 1234567890, -42, 1e-5, 0x1F, 2024-11-25 12:34:56\n"
    "Accents: café, naïve, résumé, Ångström, Straße, Ελληνικά, русский язык\n"
    "CJK: 你好，世界。日本語のテキスト。한국어 문장.\n"
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🚀\n"
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,     five spaces\n\n\n"
    "  leading spaces and trailing   \n"
    "Special: <|im_start|>user\nHi<|im_end|> <start_of_turn>model\n<end_of_turn><bos></s><|endoftext|>\n"
    "URL https://example.com/path?q=1&r=2 and e-mail a.b@c.org; C++ std::vector<int> v{1,2,3};\n"
    "!!!??? ... --- *** ''' \"\"\" ``` ~~~"
)

NEXT_TOKEN_PROMPTS = [
    "The capital of France is",
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot =",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4, 5, 6, 7, 8,",
]

GREEDY_PROMPTS = [
    "The capital of France is Paris.",
    "Here is a Python function that checks whether a number is prime:\n\n",
]
GREEDY_TOKENS = 64
TOP_K = 5

PPL_CHUNK = 512
PPL_CHUNKS = 4
# Only the start of eval.txt is tokenized (the test does the same): the first PPL_CHUNKS chunks
# come out identical to tokenizing the whole file, which this script checks.
PPL_TEXT_BYTES = 24000


def load(path, **kw):
    return Llama(model_path=path, verbose=False, n_threads=2, **kw)


def is_eog(llm, token):
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def top_k(logits, k):
    ids = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in ids], [float(logits[i]) for i in ids]


def eval_logits(llm, tokens):
    """Logits of the last token after evaluating `tokens` from an empty context."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def greedy(llm, tokens, n):
    llm.reset()
    llm.eval(tokens)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if is_eog(llm, t):
            break
        out.append(t)
        llm.eval([t])
    return out


def perplexity(llm, tokens, add_bos, bos):
    """llama-perplexity: chunks of PPL_CHUNK tokens, first token replaced by BOS when the model
    adds one, each from an empty context; the second half of each chunk is scored."""
    n_ctx = PPL_CHUNK
    first = n_ctx // 2
    nll = 0.0
    count = 0
    by_chunks = []
    for c in range(PPL_CHUNKS):
        start = c * n_ctx
        chunk = list(tokens[start:start + n_ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        for j in range(first, n_ctx - 1):
            row = np.asarray(llm.scores[j], dtype=np.float64)
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll -= row[tokens[start + j + 1]] - lse
            count += 1
        by_chunks.append(math.exp(nll / count))
    return by_chunks


def make(model_file, out_dir):
    path = os.path.join(ROOT, "models", model_file)
    if not os.path.exists(path):
        print(f"skipping {model_file}: not in models/", file=sys.stderr)
        return
    name = model_file.removesuffix(".gguf")
    result = {"model": model_file, "llama_cpp_python": llama_cpp.__version__}

    vocab = load(path, vocab_only=True)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(vocab.model)))
    result["add_bos"] = add_bos
    result["bos"] = vocab.token_bos()
    text = TOKENIZER_TEXT.encode()
    result["tokenizer"] = {
        "text": TOKENIZER_TEXT,
        "ids": vocab.tokenize(text, add_bos=True, special=False),
        "ids_parse_special": vocab.tokenize(text, add_bos=True, special=True),
    }
    with open(os.path.join(ROOT, "data", "text", "eval.txt"), "rb") as f:
        full = f.read()
    ppl_text = full[:PPL_TEXT_BYTES]
    ppl_tokens = vocab.tokenize(ppl_text, add_bos=True, special=False)
    full_tokens = vocab.tokenize(full, add_bos=True, special=False)
    needed = PPL_CHUNK * PPL_CHUNKS
    assert len(ppl_tokens) >= needed + 100, len(ppl_tokens)
    assert ppl_tokens[:needed] == full_tokens[:needed], "prefix tokenization differs"
    del vocab

    llm = load(path, n_ctx=PPL_CHUNK, n_batch=PPL_CHUNK, logits_all=True)
    result["next_token"] = []
    for p in NEXT_TOKEN_PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=False)
        top_ids, top_logits = top_k(eval_logits(llm, ids), TOP_K)
        result["next_token"].append({"prompt": p, "prompt_ids": ids, "top_ids": top_ids, "top_logits": top_logits})
    result["greedy"] = []
    for p in GREEDY_PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=False)
        out = greedy(llm, ids, GREEDY_TOKENS)
        result["greedy"].append({"prompt": p, "prompt_ids": ids, "tokens": out,
                                 "text": llm.detokenize(out).decode("utf-8", "replace")})
    by_chunks = perplexity(llm, ppl_tokens, add_bos, result["bos"])
    result["perplexity"] = {"text_bytes": PPL_TEXT_BYTES, "chunk_size": PPL_CHUNK,
                            "by_chunks": by_chunks}
    del llm

    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, name + ".json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{out}: ppl {by_chunks}, greedy: {[g['text'][:60] for g in result['greedy']]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "reference"))
    args = ap.parse_args()
    for m in args.models:
        make(m, args.out)


if __name__ == "__main__":
    main()
