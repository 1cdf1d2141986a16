"""Starts real flashlm processes for the server and chat tests.

The binary is $FLASHLM_BINARY (CTest sets it) or build/flashlm; the model is the default
SmolLM2-135M-Instruct.Q4_1.gguf that scripts/fetch_models.py puts in models/.
"""
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("FLASHLM_BINARY", REPO / "build" / "flashlm"))
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = MODEL.name
# Small enough that the "prompt longer than the context" case stays a small request.
CONTEXT = 512
MAX_BODY = 64 * 1024


def require_model():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} does not exist: build flashlm first (scripts/build.sh)")
    if not MODEL.exists():
        pytest.skip(f"{MODEL} is absent: fetch it with scripts/fetch_models.py")


class ServerProcess:
    """`flashlm serve` on a free loopback port, with its log in a file."""

    def __init__(self, log_path: Path, *extra: str, context: int = CONTEXT, model: Path = MODEL):
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "-m", str(model), "--port", "0", "-t", "2",
             "-c", str(context), "--max-body", str(MAX_BODY), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = self._wait_for_address(timeout=120)

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                if "listening on " in line:
                    return line.split("listening on ")[1].split()[0]
        self.process.kill()
        raise RuntimeError(f"the server did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server for the API tests. Its queue is short so that 16 concurrent requests
    overflow it."""
    require_model()
    s = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", "--max-queue", "4")
    yield s
    rc = s.stop()
    assert rc == 0, f"the server exited with {rc} on SIGTERM:\n{s.log_text()}"


@pytest.fixture
def make_server(tmp_path):
    """For tests that need a server of their own (to stop it, say)."""
    require_model()
    started = []

    def make(*extra: str, **options) -> ServerProcess:
        s = ServerProcess(tmp_path / f"server{len(started)}.log", *extra, **options)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop(signal.SIGKILL)
