"""`flashlm finetune` and `--lora` from the command line, on the real SmolLM2 model: a short
run writes an adapter (llama.cpp's format), its checkpoint and its loss plot; run, perplexity
and a resumed run take them; bad flags and files get one clear line and a non-zero status.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("FLASHLM_BINARY", REPO / "build" / "flashlm"))
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBRATION = REPO / "data" / "text" / "calibration.txt"
EVAL = REPO / "data" / "text" / "eval.txt"

pytestmark = pytest.mark.skipif(not GGUF.exists() or not EVAL.exists(),
                                reason="run scripts/fetch_models.py and scripts/fetch_text.sh")


def flashlm(*args, check=True):
    r = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    train, held_out = d / "train.txt", d / "eval.txt"
    train.write_bytes(CALIBRATION.read_bytes()[:20000])
    held_out.write_bytes(EVAL.read_bytes()[:6000])
    out = d / "adapter.gguf"
    r = flashlm("finetune", "-m", GGUF, "-f", train, "--eval-file", held_out, "-o", out, "-c", 32,
                "--steps", 4, "--lr", "1e-3", "--warmup", 1, "--eval-every", 2, "--eval-samples", 2,
                "--lora-rank", 4, "--lora-modules", "attn_q,attn_v,ffn_down",
                "--checkpoint-every", 2, "-t", 2)
    return d, out, r


def test_finetune_writes_adapter_checkpoint_and_plot(trained):
    d, out, r = trained
    assert "wrote" in r.stdout and "held-out loss" in r.stdout
    assert r.stderr.count("step ") >= 4 and "peak RSS" in r.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert Path(str(out) + ".checkpoint").exists()
    assert Path(str(out) + ".loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_adapter_runs_in_run_and_perplexity(trained):
    d, out, _ = trained
    r = flashlm("run", "-m", GGUF, "--lora", out, "-p", "It is a truth", "-n", 4, "--temp", 0)
    assert r.stdout.strip()
    base = flashlm("perplexity", "-m", GGUF, "-f", d / "eval.txt", "-c", 64, "--chunks", 2)
    adapted = flashlm("perplexity", "-m", GGUF, "-f", d / "eval.txt", "-c", 64, "--chunks", 2,
                      "--lora", out)
    assert "perplexity:" in base.stdout and "perplexity:" in adapted.stdout
    assert base.stdout.split("perplexity:")[1] != adapted.stdout.split("perplexity:")[1]


def test_resume_continues_from_the_checkpoint(trained):
    d, out, _ = trained
    r = flashlm("finetune", "-m", GGUF, "-f", d / "train.txt", "-o", d / "more.gguf", "-c", 32,
                "--steps", 6, "--lr", "1e-3", "--warmup", 1, "--lora-rank", 4,
                "--lora-modules", "attn_q,attn_v,ffn_down", "--resume", str(out) + ".checkpoint",
                "-t", 2)
    steps = [line.split()[1] for line in r.stderr.splitlines() if line.startswith("step ")]
    assert steps == ["5/6", "6/6"]


@pytest.mark.parametrize("args, message", [
    (["--lora-modules", "attn_x"], "unknown LoRA module 'attn_x'"),
    (["--lora-rank", "4", "--resume", "{adapter}"], "is not a flashlm finetune checkpoint"),
    (["--lora-rank", "8", "--lora-modules", "attn_q,attn_v,ffn_down", "--resume", "{checkpoint}"],
     "resume with the same --lora-rank"),
])
def test_bad_finetune_flags_say_what_is_wrong(trained, args, message):
    d, out, _ = trained
    args = [a.format(adapter=out, checkpoint=str(out) + ".checkpoint") for a in args]
    r = flashlm("finetune", "-m", GGUF, "-f", d / "train.txt", "-o", d / "bad.gguf", "-c", 32,
                "--steps", 2, *args, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_bad_lora_flags_say_what_is_wrong(trained):
    d, out, _ = trained
    r = flashlm("run", "-m", GGUF, "--lora", GGUF, "-p", "x", "-n", 1, check=False)
    assert r.returncode != 0 and "is not a LoRA adapter" in r.stderr
    r = flashlm("run", "-m", GGUF, "--lora", out, "--lora-scale", 1, "--lora-scale", 2, "-p", "x",
                "-n", 1, check=False)
    assert r.returncode != 0 and "2 --lora-scale values for 1 --lora adapters" in r.stderr


def test_mem_budget_leaves_the_weights_on_flash_and_refuses_too_little(trained):
    """Under a budget that cannot hold the weights, they stay on flash (a layer at a time) and
    training gives the loss it gives with them in DRAM; a budget under the process is refused."""
    d, _, _ = trained
    common = ["finetune", "-m", GGUF, "-f", d / "train.txt", "-c", 32, "--steps", 2,
              "--lr", "1e-3", "--warmup", 1, "--lora-rank", 4, "-t", 2]
    in_dram = flashlm(*common, "-o", d / "dram.gguf")
    # The least it needs with the weights on flash, from its refusal of too little (the
    # process itself is measured: larger under a sanitizer), then just that much.
    r = flashlm(*common, "-o", d / "bad.gguf", "--mem-budget", "20M", check=False)
    assert r.returncode != 0 and "raise --mem-budget" in r.stderr, r.stderr
    least = float(re.search(r"needs at least ([0-9.]+) MiB", r.stderr).group(1))
    on_flash = flashlm(*common, "-o", d / "flash.gguf", "--mem-budget", f"{int(least) + 2}M")
    assert "on flash: two layers" in on_flash.stderr, on_flash.stderr
    losses = lambda r: [line.split("|")[1] for line in r.stderr.splitlines()  # noqa: E731
                        if line.startswith("step ")]
    assert losses(on_flash) == losses(in_dram) and len(losses(in_dram)) == 2
    plenty = flashlm(*common, "-o", d / "plenty.gguf", "--mem-budget", "4G")
    assert "all in DRAM" in plenty.stderr
