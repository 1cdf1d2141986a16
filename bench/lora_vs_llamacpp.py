#!/usr/bin/env python3
"""Held-out perplexity of a base model and of the model with a LoRA adapter, in flashlm
(`flashlm perplexity --lora`) and in llama.cpp (llama-cpp-python's lora_path), side by side:
the adapter flashlm trains must give the same figure in both engines.

Both score the text the way llama-perplexity does: chunks of -c tokens from an empty context,
the first token replaced by BOS where the model adds one, the second half of each chunk scored.

  python3 bench/lora_vs_llamacpp.py -m models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --lora adapter.gguf -f data/text/eval.txt -c 256 --chunks 16
"""
import argparse
import math
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "reference"))
from llama_cpp_plain import Llama, llama_cpp  # noqa: E402


def llama_perplexity(model, text, ctx, chunks, lora=None):
    kw = {"lora_path": lora, "lora_scale": 1.0} if lora else {}
    llm = Llama(model_path=model, verbose=False, n_threads=2, n_ctx=ctx, n_batch=ctx,
                logits_all=True, **kw)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    tokens = llm.tokenize(text.encode(), add_bos=add_bos, special=False)
    n_chunks = min(chunks, len(tokens) // ctx)
    nll, count = 0.0, 0
    for c in range(n_chunks):
        chunk = list(tokens[c * ctx:(c + 1) * ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        for j in range(ctx // 2, ctx - 1):
            row = np.asarray(llm.scores[j], dtype=np.float64)
            m = row.max()
            nll -= row[tokens[c * ctx + j + 1]] - (m + math.log(np.exp(row - m).sum()))
            count += 1
    return math.exp(nll / count)


def flashlm_perplexity(model, text_file, ctx, chunks, lora=None):
    cmd = [os.path.join(ROOT, "build", "flashlm"), "perplexity", "-m", model, "-f", text_file,
           "-c", str(ctx), "--chunks", str(chunks), "-t", "2"]
    if lora:
        cmd += ["--lora", lora]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"perplexity: ([0-9.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("-f", "--file", default=os.path.join(ROOT, "data", "text", "eval.txt"))
    ap.add_argument("-c", "--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=16)
    a = ap.parse_args()
    with open(a.file, encoding="utf-8") as f:
        text = f.read()
    rows = []
    for label, lora in (("base", None), ("with adapter", a.lora)):
        fl = flashlm_perplexity(a.model, a.file, a.ctx, a.chunks, lora)
        ll = llama_perplexity(a.model, text, a.ctx, a.chunks, lora)
        rows.append((label, fl, ll))
    print(f"held-out perplexity, {os.path.basename(a.model)}, -c {a.ctx}, {a.chunks} chunks of {a.file}")
    print("| | flashlm | llama.cpp | difference |")
    print("|---|---|---|---|")
    for label, fl, ll in rows:
        print(f"| {label} | {fl:.4f} | {ll:.4f} | {100 * (fl / ll - 1):+.2f}% |")


if __name__ == "__main__":
    main()
