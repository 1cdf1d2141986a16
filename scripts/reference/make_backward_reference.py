#!/usr/bin/env python3
"""PyTorch autograd's gradients of a tiny model's loss with respect to a LoRA adapter, which
tests/backward_test.cpp (Backward.MatchesPyTorchAutograd) checks flashlm's backward against.

The test writes its tiny models and adapters (F32 GGUF files) when FLASHLM_TORCH_INPUTS names
a folder; this script reads them with gguf-py, runs the same forward pass in PyTorch (float64)
and stores the loss and every LoRA matrix's gradient in tests/data/reference/backward_torch.json.
torch is used only here, never by the build or the tests.

  FLASHLM_TORCH_INPUTS=/tmp/torch-in build/flashlm_tests --gtest_filter=Backward.MatchesPyTorch*
  python3 scripts/reference/make_backward_reference.py /tmp/torch-in
"""
import json
import math
import os
import sys

import gguf
import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGETS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def read(path):
    r = gguf.GGUFReader(path)
    meta = {}
    for name, field in r.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            meta[name] = bytes(field.parts[-1]).decode()
        elif field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            meta[name] = field.parts[-1][0].item()
    tensors = {}
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        shape = [int(x) for x in t.shape][::-1]  # numpy order: rows first
        tensors[t.name] = torch.tensor(np.array(t.data, dtype=np.float64).reshape(shape))
    return meta, tensors


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, n_heads, hd, pos, base, halves):
    # x: n x (n_heads * hd); rotates all hd dims (the tiny models' rope_dims = head_dim).
    n = x.shape[0]
    x = x.reshape(n, n_heads, hd)
    half = hd // 2
    i = torch.arange(half, dtype=torch.float64)
    theta = pos[:, None] * base ** (-2.0 * i / hd)  # n x half
    c, s = torch.cos(theta)[:, None, :], torch.sin(theta)[:, None, :]
    if halves:
        a, b = x[..., :half], x[..., half:]
        out = torch.cat([a * c - b * s, a * s + b * c], dim=-1)
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out = torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(n, n_heads, hd)
    return out.reshape(n, n_heads * hd)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


def run(folder, arch, case):
    meta, w = read(os.path.join(folder, f"{arch}.model.gguf"))
    ameta, lora = read(os.path.join(folder, f"{arch}.lora.gguf"))
    with open(os.path.join(folder, f"{arch}.case.json")) as f:
        spec = json.load(f)
    tokens, weight, scale = spec["tokens"], spec["weight"], spec["scale"]
    alpha = ameta["adapter.lora.alpha"]
    params = {}
    for name, t in lora.items():
        params[name] = t.clone().requires_grad_(True)
    a = arch
    n_layers = meta[f"{a}.block_count"]
    d = meta[f"{a}.embedding_length"]
    n_heads = meta[f"{a}.attention.head_count"]
    n_kv = meta[f"{a}.attention.head_count_kv"]
    hd = d // n_heads
    eps = meta[f"{a}.attention.layer_norm_rms_epsilon"]
    base = meta.get(f"{a}.rope.freq_base", 10000.0)
    window = meta.get(f"{a}.attention.sliding_window", 0)
    halves = a != "llama"
    inputs, targets = tokens[:-1], tokens[1:]
    n = len(inputs)
    pos = torch.arange(n, dtype=torch.float64)

    def linear(x, layer, target):
        y = x @ w[f"blk.{layer}.{target}.weight"].T
        name = f"blk.{layer}.{target}.weight"
        if name + ".lora_a" in params:
            A, B = params[name + ".lora_a"], params[name + ".lora_b"]
            s = scale * alpha / A.shape[0] if alpha else scale
            y = y + s * ((x @ A.T) @ B.T)
        return y

    x = w["token_embd.weight"][inputs]
    if a == "gemma3":
        x = x * math.sqrt(d)
    for l in range(n_layers):
        p = f"blk.{l}."
        xn = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q, k, v = linear(xn, l, "attn_q"), linear(xn, l, "attn_k"), linear(xn, l, "attn_v")
        if a == "qwen2":
            q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
        if a == "gemma3":
            q = rms_norm(q.reshape(n, n_heads, hd), w[p + "attn_q_norm.weight"], eps).reshape(n, -1)
            k = rms_norm(k.reshape(n, n_kv, hd), w[p + "attn_k_norm.weight"], eps).reshape(n, -1)
        q, k = rope(q, n_heads, hd, pos, base, halves), rope(k, n_kv, hd, pos, base, halves)
        local = a == "gemma3" and (l + 1) % 6 != 0
        qh = q.reshape(n, n_heads, hd).transpose(0, 1)
        group = n_heads // n_kv
        kh = k.reshape(n, n_kv, hd).transpose(0, 1).repeat_interleave(group, 0)
        vh = v.reshape(n, n_kv, hd).transpose(0, 1).repeat_interleave(group, 0)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(hd)
        t_idx, s_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
        mask = s_idx > t_idx
        if local:
            mask = mask | (s_idx <= t_idx - window)
        scores = scores.masked_fill(mask, float("-inf"))
        o = (torch.softmax(scores, -1) @ vh).transpose(0, 1).reshape(n, -1)
        att = linear(o, l, "attn_output")
        if a == "gemma3":
            att = rms_norm(att, w[p + "post_attention_norm.weight"], eps)
        h = x + att
        xn2 = rms_norm(h, w[p + "ffn_norm.weight"], eps)
        g, u = linear(xn2, l, "ffn_gate"), linear(xn2, l, "ffn_up")
        act = gelu_tanh(g) if a == "gemma3" else torch.nn.functional.silu(g)
        f = linear(act * u, l, "ffn_down")
        if a == "gemma3":
            f = rms_norm(f, w[p + "post_ffw_norm.weight"], eps)
        x = h + f
    hidden = rms_norm(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", w["token_embd.weight"])
    logits = hidden @ head.T
    nll = torch.logsumexp(logits, -1) - logits[torch.arange(n), torch.tensor(targets)]
    loss = (torch.tensor(weight, dtype=torch.float64) * nll).sum()
    loss.backward()
    grads = {name: t.grad.flatten()[::3].tolist() for name, t in params.items()}
    return {"loss": loss.item(), "every": 3, "gradients": grads}


def main():
    folder = sys.argv[1]
    out = {"torch": torch.__version__}
    for arch in ["llama", "qwen2", "gemma3"]:
        out[arch] = run(folder, arch, None)
        print(arch, "loss", out[arch]["loss"])
    path = os.path.join(ROOT, "tests", "data", "reference", "backward_torch.json")
    with open(path, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(path)


if __name__ == "__main__":
    main()
