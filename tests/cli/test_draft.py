"""Speculative decoding's flags on the command line, on the real SmolLM2 model drafting for
itself: -md / --model-draft / --draft MODEL.gguf give plain decoding's text, the plan counts the
draft model, and contradicting or unknown sources get one clear line.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("FLASHLM_BINARY", REPO / "build" / "flashlm"))
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.skipif(not GGUF.exists(), reason="run scripts/fetch_models.py")

RUN = ["run", "-m", GGUF, "-p", "The Elliots of Kellynch Hall were", "-n", 12, "--temp", 0,
       "-c", 256, "-t", 2]


def flashlm(*args, check=True):
    r = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_a_draft_model_gives_plain_decodings_text():
    plain = flashlm(*RUN)
    for flags in (["-md", GGUF], ["--model-draft", GGUF], ["--draft", GGUF]):
        r = flashlm(*RUN, *flags, "--draft-p-min", 0.5)
        assert r.stdout == plain.stdout, flags
        assert "draft model:" in r.stderr  # the plan counts it
        assert f"draft model {GGUF.name}:" in r.stderr and "tokens per pass" in r.stderr


def test_self_drafts_give_plain_decodings_text_and_need_a_resident_part(tmp_path):
    flm = tmp_path / "smollm2.flm"
    flashlm("convert", "-m", GGUF, "-o", flm)
    run = ["run", "-m", flm, *RUN[3:], "--mode", "hybrid"]
    # The least hybrid needs (the process itself is measured: larger under a sanitizer, and
    # from run to run by up to tens of MiB there), from its refusal of too little, and part of
    # the FFN's 56 MiB resident beyond it: a budget that leaves none resident in this run (its
    # refusal names it) is raised and tried again.
    r = flashlm(*run, "--mem-budget", "20M", check=False)
    least = float(re.search(r"needs at least ([0-9.]+) MiB", r.stderr).group(1))
    for extra in (24, 36, 48):
        budget = ["--mem-budget", f"{int(least) + extra}M"]
        drafted = flashlm(*run, *budget, "--draft", "self", "--draft-p-min", 0, check=False)
        if "this plan keeps none" not in drafted.stderr:
            break
    assert drafted.returncode == 0, drafted.stderr[-2000:]
    plain = flashlm(*run, *budget)
    assert drafted.stdout == plain.stdout
    assert "draft self:" in drafted.stderr and "tokens per pass" in drafted.stderr
    r = flashlm(*RUN, "--draft", "self", check=False)  # a GGUF: all of it in DRAM
    assert r.returncode != 0 and "every FFN neuron is in DRAM" in r.stderr
    r = flashlm(*RUN, "--draft", "self", "-md", GGUF, check=False)
    assert r.returncode != 0 and "--draft self and a draft model" in r.stderr


def test_contradicting_or_unknown_draft_sources_are_refused():
    r = flashlm(*RUN, "--draft", "ngram", "-md", GGUF, check=False)
    assert r.returncode != 0 and "--draft ngram and a draft model" in r.stderr
    r = flashlm(*RUN, "--draft", "medusa", check=False)
    assert r.returncode != 0 and "--draft" in r.stderr
    r = flashlm(*RUN, "-md", GGUF, "--draft-p-min", 2, check=False)
    assert r.returncode != 0 and "--draft-p-min" in r.stderr
