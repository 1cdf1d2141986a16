#!/usr/bin/env python3
"""Dense flashlm against llama.cpp (through llama-cpp-python) on the same GGUF files: prompt
processing (prefill) and decode tokens/s, same prompt (the first N tokens of a text), same
number of greedy tokens, same thread count. Runs alternate between the two engines and the
median of the runs is reported, as a markdown table with flashlm / llama.cpp ratios.

  pip install llama-cpp-python
  python3 bench/dense_vs_llamacpp.py [--flashlm build/flashlm] [--threads 2] [--runs 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
from llama_cpp_plain import Llama, llama_cpp  # noqa: E402  (plain CPU buffers)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
]


def run_flashlm(binary, model, text_file, n_prompt, n_gen, threads):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([binary, "bench", "--modes", "dense", "-m", model, "-f", text_file,
                        "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
                        "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(out.name))[0]
    return n_prompt / (r["prefill_ms"] / 1e3), 1e3 / r["ms_total"]


def last_logits(llm):
    # Without logits_all, llama-cpp-python keeps no copy: read the context's last row.
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                 shape=(llm.n_vocab(),))


def run_llama(llm, prompt, n_gen):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    decode = 0.0
    for _ in range(n_gen):
        token = int(np.argmax(last_logits(llm)))
        start = time.perf_counter()
        llm.eval([token])
        decode += time.perf_counter() - start
    return len(prompt) / prefill, n_gen / decode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flashlm", default=os.path.join(ROOT, "build", "flashlm"))
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--text", default=os.path.join(ROOT, "data", "text", "eval.txt"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with open(args.text, "rb") as f:
        text = f.read(64 * 1024)
    rows = []
    for name in args.models:
        path = os.path.join(ROOT, "models", name)
        if not os.path.exists(path):
            print(f"skipping {name}: not in models/")
            continue
        llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=args.threads,
                    n_threads_batch=args.threads, verbose=False)
        prompt = llm.tokenize(text, add_bos=True, special=False)[:args.n_prompt]
        run_llama(llm, prompt[:8], 2)  # warm-up
        flm, ref = [], []
        for _ in range(args.runs):
            flm.append(run_flashlm(args.flashlm, path, args.text, args.n_prompt, args.n_gen,
                                   args.threads))
            ref.append(run_llama(llm, prompt, args.n_gen))
        del llm
        med = lambda runs, i: statistics.median(r[i] for r in runs)
        rows.append((name, med(flm, 0), med(ref, 0), med(flm, 1), med(ref, 1)))
        print(f"{name}: flashlm {flm}, llama.cpp {ref}", flush=True)

    print(f"\nllama-cpp-python {llama_cpp.__version__}, {args.threads} threads, prompt "
          f"{args.n_prompt} tokens, {args.n_gen} generated, median of {args.runs} alternating runs\n")
    print("| model | prefill tok/s flashlm | prefill tok/s llama.cpp | ratio | "
          "decode tok/s flashlm | decode tok/s llama.cpp | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, fp, rp, fd, rd in rows:
        print(f"| {name} | {fp:.1f} | {rp:.1f} | {fp / rp:.2f} | {fd:.1f} | {rd:.1f} | "
              f"{fd / rd:.2f} |")


if __name__ == "__main__":
    main()
