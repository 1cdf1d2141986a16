"""`flashlm convert --neuron-order` on the command line, on the real SmolLM2 model: importance
needs calibration text and says so; with it, the file records the order, computes what the
natural file does, and no temporary file stays behind.
"""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("FLASHLM_BINARY", REPO / "build" / "flashlm"))
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBRATION = REPO / "data" / "text" / "calibration.txt"

pytestmark = pytest.mark.skipif(not GGUF.exists(), reason="run scripts/fetch_models.py")


def flashlm(*args, check=True):
    r = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_importance_without_calibration_text_names_the_flag(tmp_path):
    out = tmp_path / "m.flm"
    r = flashlm("convert", "-m", GGUF, "-o", out, "--neuron-order", "importance", check=False)
    assert r.returncode != 0 and "-f/--calibration" in r.stderr, r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibration_text_without_importance_and_unknown_orders_are_refused(tmp_path):
    out = tmp_path / "m.flm"
    text = tmp_path / "text.txt"
    text.write_text("some calibration text\n")
    r = flashlm("convert", "-m", GGUF, "-o", out, "-f", text, check=False)
    assert r.returncode != 0 and "--neuron-order importance" in r.stderr, r.stderr
    r = flashlm("convert", "-m", GGUF, "-o", out, "--neuron-order", "random", check=False)
    assert r.returncode != 0 and "--neuron-order" in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.skipif(not CALIBRATION.exists(), reason="needs data/text/calibration.txt")
def test_importance_order_is_recorded_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "imp.flm"
    r = flashlm("convert", "-m", GGUF, "-o", out, "--neuron-order", "importance",
                "-f", CALIBRATION, "--calibration-tokens", 256, "-t", 2)
    assert "neurons ordered by importance on 256 calibration tokens" in r.stdout, r.stdout
    assert "neurons in importance order" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp.flm"]
    info = flashlm("info", "-m", out)
    assert "neurons in importance order" in info.stdout
    flashlm("verify", "-m", out)
