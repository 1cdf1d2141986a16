"""`flashlm chat` driven through pipes: turns, /reset, Ctrl-C stopping one answer, EOF."""
import signal
import subprocess
import threading
import time

from conftest import BINARY, MODEL, require_model


class Chat:
    def __init__(self, *extra: str):
        require_model()
        self.process = subprocess.Popen(
            [str(BINARY), "chat", "-m", str(MODEL), "-t", "2", "-c", "512", "--temp", "0",
             *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self.readers = [threading.Thread(target=self._drain, args=(s, b), daemon=True)
                        for s, b in ((self.process.stdout, self.out),
                                     (self.process.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _drain(stream, buffer):
        for chunk in iter(lambda: stream.read1(4096), b""):
            buffer.extend(chunk)

    def say(self, line: str):
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for(self, buffer, predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while not predicate(bytes(buffer)):
            assert self.process.poll() is None, f"chat exited early:\n{self.err.decode()}"
            assert time.monotonic() < deadline, f"timed out; stderr:\n{self.err.decode()}"
            time.sleep(0.05)

    def finish(self, timeout=120) -> int:
        self.process.stdin.close()
        try:
            rc = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        for r in self.readers:
            r.join(timeout=10)
        return rc


def test_turns_and_end_of_input():
    chat = Chat("--system", "You are terse.", "-n", "8")
    chat.say("Hi")
    chat.say("/reset")
    chat.say("What is 2 + 2?")
    rc = chat.finish()
    assert rc == 0, chat.err.decode()
    answers = chat.out.decode(errors="replace").strip("\n").split("\n")
    assert len([a for a in answers if a.strip()]) >= 2, chat.out
    assert b"starts over" in chat.err


def test_ctrl_c_stops_the_answer_not_the_program():
    chat = Chat("-n", "400")
    chat.say("Count from 1 to 400, separated by commas.")
    chat.wait_for(chat.out, lambda out: len(out) > 20)
    chat.process.send_signal(signal.SIGINT)
    chat.wait_for(chat.err, lambda err: b"(stopped)" in err, timeout=30)
    shown = len(chat.out)
    chat.say("Hi")
    chat.wait_for(chat.out, lambda out: len(out) > shown + 2)
    assert chat.finish() == 0, chat.err.decode()

