#!/usr/bin/env python3
"""Makes the llama.cpp LoRA reference vectors that tests/lora_test.cpp checks flashlm against.

For each model it writes a LoRA adapter in llama.cpp's GGUF format with known contents (the
pattern of tests/support/lora_pattern.cpp: sines and cosines of the indices), loads it into
llama.cpp (llama-cpp-python's lora_path / lora_scale) and stores the top-5 next-token ids and
logits after make_reference.py's prompts in tests/data/reference/<model>.lora.json, with the
base model's top-5 beside them. The adapter itself is not stored: the test makes it again.

Needs llama-cpp-python and gguf (pip install llama-cpp-python gguf). From the repository root:
  python3 scripts/reference/make_lora_reference.py [--models NAME ...]
"""
import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import gguf

from llama_cpp_plain import Llama, llama_cpp
from make_reference import MODELS, NEXT_TOKEN_PROMPTS, ROOT, TOP_K, eval_logits, top_k

TARGETS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
RANK = 4
ALPHA = 8.0
# The adapter's values are AMPLITUDE times a sine: large enough to move the logits several
# times further than the two engines differ, small enough to keep the model where it works
# (at 0.1 Gemma 3's and Qwen's hidden states are thrown so far that the engines' 8-bit
# activations drift apart). --amplitude overrides it for every model.
AMPLITUDES = {"SmolLM2-135M-Instruct.Q4_1.gguf": 0.1}
DEFAULT_AMPLITUDE = 0.05
AMPLITUDE = None
SCALE = 0.75




def pattern(rows, cols, fn):
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = np.arange(cols, dtype=np.float64)[None, :]
    return fn(r, c).astype(np.float32)


def write_adapter(model_path, out_path, targets):
    reader = gguf.GGUFReader(model_path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    tensors = {t.name: [int(x) for x in t.shape] for t in reader.tensors}  # shape = ne order
    n_layers = 1 + max(int(n.split(".")[1]) for n in tensors if n.startswith("blk."))
    w = gguf.GGUFWriter(out_path, arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", ALPHA)
    for l in range(n_layers):
        for t, target in enumerate(TARGETS):
            name = f"blk.{l}.{target}.weight"
            if name not in tensors or target not in targets:
                continue
            n_in, n_out = tensors[name][0], tensors[name][1]
            # A[r][i] and B[o][r] as tests/support/lora_pattern.cpp makes them.
            a = pattern(RANK, n_in, lambda r, i: AMPLITUDE * np.sin(
                0.61 * i + 1.7 * r + 0.37 * l + 1.1 * t + 0.5))
            b = pattern(n_out, RANK, lambda o, r: AMPLITUDE * np.cos(
                0.43 * o + 2.3 * r + 0.29 * l + 0.7 * t + 0.25))
            w.add_tensor(name + ".lora_a", a)  # numpy (rank, in) -> GGUF dims {in, rank}
            w.add_tensor(name + ".lora_b", b)  # numpy (out, rank) -> GGUF dims {rank, out}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def next_tokens(llm):
    out = []
    for p in NEXT_TOKEN_PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=False)
        top_ids, top_logits = top_k(eval_logits(llm, ids), TOP_K)
        out.append({"prompt": p, "prompt_ids": ids, "top_ids": top_ids, "top_logits": top_logits})
    return out


def make(model_file, out_dir, targets):
    path = os.path.join(ROOT, "models", model_file)
    if not os.path.exists(path):
        print(f"skipping {model_file}: not in models/", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        adapter = os.path.join(tmp, "adapter.gguf")
        write_adapter(path, adapter, targets)
        base = Llama(model_path=path, verbose=False, n_threads=2, n_ctx=512, logits_all=True)
        base_top = next_tokens(base)
        del base
        llm = Llama(model_path=path, verbose=False, n_threads=2, n_ctx=512, logits_all=True, lora_path=adapter,
                    lora_scale=SCALE)
        lora_top = next_tokens(llm)
        del llm
    result = {"model": model_file, "llama_cpp_python": llama_cpp.__version__,
              "adapter": {"rank": RANK, "alpha": ALPHA, "amplitude": AMPLITUDE,
                          "targets": targets, "scale": SCALE},
              "next_token": lora_top, "base_next_token": base_top}
    name = model_file.removesuffix(".gguf")
    out = os.path.join(out_dir, name + ".lora.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(out, [(a["top_ids"][0], b["top_ids"][0]) for a, b in zip(lora_top, base_top)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--targets", nargs="*", default=TARGETS)
    ap.add_argument("--amplitude", type=float, default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "reference"))
    args = ap.parse_args()
    for m in args.models:
        globals()["AMPLITUDE"] = args.amplitude or AMPLITUDES.get(m, DEFAULT_AMPLITUDE)
        make(m, args.out, args.targets)


if __name__ == "__main__":
    main()
