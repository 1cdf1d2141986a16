#!/usr/bin/env python3
"""Writes small seed inputs for the fuzz harnesses in fuzz/ (each well under 100 KB).

    scripts/fuzz_seeds.py OUT_DIR

makes OUT_DIR/<harness>/<seed> for gguf_file, tokenizer_text and server_request; scripts/fuzz.sh
adds the flm_file seeds by converting the GGUF seeds with `flashlm convert`. Models are tiny
random llama models written with the GGUF layout by hand, so nothing here needs a download.
"""
import os
import random
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
T_F32, T_F16, T_Q8_0 = 0, 1, 8


def gguf_string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_value(kind, v):
    if kind == STRING:
        return gguf_string(v)
    if kind == ARRAY:
        element_kind, items = v
        out = struct.pack("<IQ", element_kind, len(items))
        return out + b"".join(gguf_value(element_kind, x) for x in items)
    fmt = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q"}[kind]
    return struct.pack(fmt, v)


def q8_0(values):
    out = b""
    for i in range(0, len(values), 32):
        block = values[i:i + 32]
        amax = max(abs(x) for x in block) or 1.0
        d = amax / 127
        out += struct.pack("<e", d) + bytes((round(x / d) & 0xFF) for x in block)
    return out


def write_gguf(path, metadata, tensors):
    """metadata: [(key, kind, value)]; tensors: [(name, dims, type, values)]."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        header += gguf_string(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    data, infos = b"", b""
    for name, dims, ttype, values in tensors:
        blob = q8_0(values) if ttype == T_Q8_0 else struct.pack(f"<{len(values)}f", *values)
        data += b"\0" * (-len(data) % 32)
        infos += gguf_string(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, len(data))
        data += blob
    head = header + infos
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head + data)


def tiny_model(path, spm=False, matrix_type=T_F32, n_layers=2, seed=1):
    rng = random.Random(seed)
    d, ff, heads, kv_heads = 32, 32, 2, 1
    head_dim = d // heads
    if spm:
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [
            "\u2581the", "\u2581a", "th", "he", "\u2581"]
        types = [2, 3, 3] + [6] * 256 + [1] * 5
        tokenizer = [("tokenizer.ggml.model", STRING, "llama"),
                     ("tokenizer.ggml.scores", ARRAY, (F32, [-float(i) for i in range(len(tokens))])),
                     ("tokenizer.ggml.unknown_token_id", U32, 0),
                     ("tokenizer.ggml.add_bos_token", BOOL, 1)]
        bos, eos = 1, 2
    else:
        tokens = [chr(c) for c in range(33, 127)] + ["\u0120", "\u0120t", "he", "\u0120the",
                                                     "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        types = [1] * (len(tokens) - 3) + [3, 3, 3]
        tokenizer = [("tokenizer.ggml.model", STRING, "gpt2"),
                     ("tokenizer.ggml.pre", STRING, "smollm"),
                     ("tokenizer.ggml.merges", ARRAY, (STRING, ["\u0120 t", "h e", "\u0120t he"]))]
        bos = eos = len(tokens) - 3
    vocab = len(tokens)
    metadata = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz-seed"),
        ("llama.block_count", U32, n_layers),
        ("llama.embedding_length", U32, d),
        ("llama.feed_forward_length", U32, ff),
        ("llama.attention.head_count", U32, heads),
        ("llama.attention.head_count_kv", U32, kv_heads),
        ("llama.context_length", U32, 128),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.dimension_count", U32, head_dim),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, bos),
        ("tokenizer.ggml.eos_token_id", U32, eos),
    ] + tokenizer

    def rand(n):
        return [rng.uniform(-0.5, 0.5) for _ in range(n)]

    tensors = [("token_embd.weight", [d, vocab], matrix_type, rand(d * vocab)),
               ("output_norm.weight", [d], T_F32, [1.0] * d)]
    for layer in range(n_layers):
        p = f"blk.{layer}."
        tensors += [
            (p + "attn_norm.weight", [d], T_F32, [1.0] * d),
            (p + "attn_q.weight", [d, d], matrix_type, rand(d * d)),
            (p + "attn_k.weight", [d, kv_heads * head_dim], matrix_type, rand(d * kv_heads * head_dim)),
            (p + "attn_v.weight", [d, kv_heads * head_dim], matrix_type, rand(d * kv_heads * head_dim)),
            (p + "attn_output.weight", [d, d], matrix_type, rand(d * d)),
            (p + "ffn_norm.weight", [d], T_F32, [1.0] * d),
            (p + "ffn_gate.weight", [d, ff], matrix_type, rand(d * ff)),
            (p + "ffn_up.weight", [d, ff], matrix_type, rand(d * ff)),
            (p + "ffn_down.weight", [ff, d], matrix_type, rand(ff * d)),
        ]
    write_gguf(path, metadata, tensors)


TEXTS = [
    b"Once upon a time, there was a little flash drive.",
    b"<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Caf\u00e9 \u00fcber \u65e5\u672c\u8a9e \U0001F600 \u0645\u0631\u062d\u0628\u0627".encode(),
    b"   leading and trailing   \n\n\t tabs 12345 67890 don't it's I'll",
    b"\xff\xfe invalid \xc3 utf-8 \xe2\x82 bytes \x00 nul",
]

REQUESTS = [
    b"\x00" + b'{"prompt": "Hello", "max_tokens": 8, "temperature": 0}',
    b"\x00" + b'{"model": "smollm2", "prompt": [1, 2, 3], "stop": ["\\n", "."], "seed": 4, '
    b'"top_p": 0.9, "stream": true, "stream_options": {"include_usage": true}}',
    b"\x01" + b'{"messages": [{"role": "system", "content": "Be brief."}, '
    b'{"role": "user", "content": "Hi"}], "max_tokens": 16}',
    b"\x01" + b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], '
    b'"n": 1, "logprobs": null, "stop": "x"}',
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    for harness in ("gguf_file", "tokenizer_text", "server_request"):
        os.makedirs(os.path.join(out, harness), exist_ok=True)
    tiny_model(os.path.join(out, "gguf_file", "bpe_f32.gguf"), n_layers=1)
    tiny_model(os.path.join(out, "gguf_file", "spm_q8_0.gguf"), spm=True, matrix_type=T_Q8_0)
    for i, text in enumerate(TEXTS):
        with open(os.path.join(out, "tokenizer_text", f"text{i}"), "wb") as f:
            f.write(text)
    for i, body in enumerate(REQUESTS):
        with open(os.path.join(out, "server_request", f"request{i}"), "wb") as f:
            f.write(body)


if __name__ == "__main__":
    main()
