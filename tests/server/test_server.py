"""`flashlm serve` over HTTP on loopback: the official openai client for the happy paths,
plain HTTP for the requests a client library would not send."""
import http.client
import json
import re
import signal
import subprocess
import threading
import time
from urllib.parse import urlparse

import openai
import pytest
import requests

from conftest import BINARY, CONTEXT, MAX_BODY, MODEL, MODEL_ID, REPO

CHAT = [{"role": "user", "content": "Name three colors."}]
# A prompt the model continues at length, for tests that cut a generation short.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


@pytest.fixture(scope="module")
def client(server):
    # No retries: a 503 must reach the test rather than be retried away.
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def post(server, path, body, **kwargs):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=120,
                         headers={"Content-Type": "application/json"}, **kwargs)


def metric(server, name):
    text = requests.get(server.url + "/metrics", timeout=30).text
    values = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert values, f"{name} missing from /metrics:\n{text}"
    return float(values[0])


def wait_until_idle(server, timeout=60):
    deadline = time.monotonic() + timeout
    while metric(server, "flashlm_busy") != 0:
        assert time.monotonic() < deadline, "the server stayed busy"
        time.sleep(0.05)


def assert_healthy(server):
    r = requests.get(server.url + "/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_health_and_models(server, client):
    assert_healthy(server)
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_completion(client):
    r = client.completions.create(model=MODEL_ID, prompt="The capital of France is",
                                  max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert r.object == "text_completion" and r.model == MODEL_ID
    assert isinstance(choice.text, str) and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_without_model_name(server):
    r = post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_completion_stream(client):
    chunks = list(client.completions.create(
        model=MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0.7, seed=1,
        stream=True, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks)
    assert text_chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert not chunks[-1].choices and 0 < usage.completion_tokens <= 8


def test_chat(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=8,
                                       temperature=0)
    assert r.object == "chat.completion"
    message = r.choices[0].message
    assert message.role == "assistant" and message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8


def test_chat_stream(client):
    chunks = list(client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "system", "content": "You are terse."}] + CHAT,
        max_tokens=8, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence(server, stream):
    """The answer ends before the stop text, which is left out, and finishes with "stop"."""
    body = {"prompt": "List: apples, pears, plums, figs, dates, limes,", "max_tokens": 12,
            "temperature": 0}
    # Twice, so that the reference sees the KV cache as the stopped request will.
    post(server, "/v1/completions", body)
    reference = post(server, "/v1/completions", body).json()["choices"][0]["text"]
    assert len(reference) >= 4, reference
    stop = reference[2:4]
    expected = reference[:reference.index(stop)]
    r = post(server, "/v1/completions", {**body, "stop": [stop], "stream": stream},
             stream=stream)
    assert r.status_code == 200
    if stream:
        events = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        text = r.json()["choices"][0]["text"]
        finish = r.json()["choices"][0]["finish_reason"]
    assert text == expected
    assert finish == "stop"


@pytest.mark.parametrize("path,body,status,param,code", [
    ("/v1/completions", '{"prompt": "hi", ', 400, None, None),
    ("/v1/completions", "[1, 2]", 400, None, None),
    ("/v1/chat/completions", "not json at all", 400, None, None),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt", None),
    ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ("/v1/completions", {"prompt": 42}, 400, "prompt", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "hi", "temperature": "warm"}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": CONTEXT}, 400, "max_tokens",
     "context_length_exceeded"),
    ("/v1/completions", {"prompt": "hello " * CONTEXT}, 400, "prompt",
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello " * CONTEXT}]},
     400, "messages", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 400, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4"}, 400, "model",
     "model_not_found"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n", None),
    ("/v1/completions", {"prompt": "x" * (MAX_BODY + 1)}, 413, None, None),
    ("/v1/nothing", {"prompt": "hi"}, 404, None, None),
])
def test_bad_request(server, path, body, status, param, code):
    assert_error(post(server, path, body), status, param, code)
    assert_healthy(server)


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert e.value.code == "model_not_found"


def test_concurrent_requests(server):
    """16 at once against a queue of 4: each is answered or turned away with 503, cleanly."""
    n = 16
    barrier = threading.Barrier(n)
    responses = [None] * n

    def worker(i):
        barrier.wait()
        responses[i] = post(server, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": f"Count to {i}."}],
                             "max_tokens": 8, "temperature": 0})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 5, statuses  # the running one and the 4 waiting
    assert statuses.count(503) >= 1, statuses
    for r in responses:
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"] is not None
        else:
            assert_error(r, 503, code="server_busy")
    assert_healthy(server)
    assert post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}).status_code == 200
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert 'flashlm_requests_total{endpoint="/v1/chat/completions",status="503"}' in text


def test_disconnect_cancels_generation(server):
    """A client that goes away mid-stream stops its generation; the next request is served."""
    wait_until_idle(server)
    before = metric(server, "flashlm_generated_tokens_total")
    address = urlparse(server.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": COUNTING, "max_tokens": 400, "stream": True, "temperature": 0}),
        {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    while not response.fp.readline().startswith(b"data: "):
        pass
    response.close()
    conn.close()
    wait_until_idle(server)
    generated = metric(server, "flashlm_generated_tokens_total") - before
    assert generated < 100, f"{generated} tokens generated for a client that left"
    r = post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 4})
    assert r.status_code == 200, r.text


def test_metrics(server):
    text = requests.get(server.url + "/metrics", timeout=30).text
    for name in ("flashlm_requests_total", "flashlm_generated_tokens_total",
                 "flashlm_last_tokens_per_second", "flashlm_flash_bytes_read_total",
                 "flashlm_queue_waiting"):
        assert f"# TYPE {name} " in text
    assert 'flashlm_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'flashlm_requests_total{endpoint="/v1/completions",status="400"}' in text
    assert metric(server, "flashlm_generated_tokens_total") > 0


def test_sigterm_mid_generation_stops_cleanly(make_server):
    s = make_server()
    responses = []

    def stream():
        try:
            responses.append(post(s, "/v1/completions", {"prompt": COUNTING, "max_tokens": 400,
                                                         "temperature": 0, "stream": True},
                                  stream=True))
            for _ in responses[0].iter_lines():
                pass
        except requests.RequestException:
            pass  # the server may cut the stream short: that is the point

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.0)
    started = time.monotonic()
    assert s.stop(signal.SIGTERM, timeout=20) == 0, s.log_text()
    assert time.monotonic() - started < 10
    t.join(timeout=30)
    assert "stopped" in s.log_text()


@pytest.mark.parametrize("text", ["!" * (MAX_BODY - 100), "a" * (MAX_BODY - 100),
                                  "<" * (MAX_BODY - 100)])
def test_hostile_prompt_is_answered_at_once(server, text):
    """A body-sized prompt of one pre-token (quadratic to merge before: 58 s for 100 kB of
    "!") is refused in well under a second, and the server keeps serving meanwhile."""
    wait_until_idle(server)
    started = time.monotonic()
    r = post(server, "/v1/completions", {"prompt": text, "max_tokens": 4})
    elapsed = time.monotonic() - started
    assert_error(r, 400, "prompt", "context_length_exceeded")
    assert elapsed < 1.0, f"{elapsed:.2f} s for a {len(text)}-byte prompt"
    assert_healthy(server)


def test_hostile_prompt_that_must_be_tokenized_is_answered_at_once(make_server):
    """With a context large enough that the length alone does not refuse it, a body-sized
    prompt of one pre-token is tokenized (O(n log n)) and answered in well under a second."""
    s = make_server(context=8192)
    for text in ["!" * (MAX_BODY - 100), "a" * (MAX_BODY - 100)]:
        started = time.monotonic()
        r = post(s, "/v1/completions", {"prompt": text, "max_tokens": 1})
        elapsed = time.monotonic() - started
        # Refused after tokenizing (the count of tokens is in the message), not before.
        assert_error(r, 400, "prompt", "context_length_exceeded")
        assert " tokens and the context holds 8192" in r.json()["error"]["message"], r.text
        assert elapsed < 1.0, f"{elapsed:.2f} s to tokenize and refuse it"
    assert_healthy(s)


def test_sigterm_during_a_long_prompt_stops_within_a_second(make_server):
    """SIGTERM while the server processes a long prompt: the prompt is abandoned between
    batches, not finished first. On Qwen2.5-Coder-1.5B (where the suite has it) this prompt
    takes several seconds; SmolLM2 otherwise."""
    qwen = REPO / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    s = make_server(model=qwen if qwen.exists() else MODEL)
    prompt = "hello " * (CONTEXT - 40)  # a token each
    done = []

    def request():
        try:
            done.append(post(s, "/v1/completions", {"prompt": prompt, "max_tokens": 8}))
        except requests.RequestException:
            done.append(None)  # the server may close the connection: that is the point

    t = threading.Thread(target=request)
    sent = time.monotonic()
    t.start()
    # The prompt is being processed once the server reports itself busy.
    while metric(s, "flashlm_busy") == 0:
        assert time.monotonic() - sent < 30 and t.is_alive(), "the request never started"
        time.sleep(0.01)
    time.sleep(0.2)
    started = time.monotonic()
    assert s.stop(signal.SIGTERM, timeout=20) == 0, s.log_text()
    elapsed = time.monotonic() - started
    t.join(timeout=30)
    assert elapsed < 1.0, f"the server took {elapsed:.2f} s to stop"
    assert "stopped" in s.log_text()


def assert_same_answers(server, drafted):
    """Greedy and seeded completions and a chat of two turns (the second reusing the cache):
    the same from both servers."""
    for body in ({"prompt": COUNTING, "max_tokens": 40, "temperature": 0},
                 {"prompt": COUNTING, "max_tokens": 40, "temperature": 0.8, "seed": 7},
                 {"messages": [{"role": "user", "content": "Repeat: red, green, blue, red, "
                                "green, blue, red, green, blue."}],
                  "max_tokens": 32, "temperature": 0}):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        a = post(server, path, body)
        b = post(drafted, path, body)
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
        key = "message" if "messages" in body else "text"
        pick = (lambda r: r.json()["choices"][0]["message"]["content"]) if key == "message" \
            else (lambda r: r.json()["choices"][0]["text"])
        assert pick(a) == pick(b), body
        assert a.json()["usage"] == b.json()["usage"]
        if key == "message":
            # The next turn starts with this one: both caches (target and draft) are reused.
            turn = body["messages"] + [{"role": "assistant", "content": pick(a)},
                                       {"role": "user", "content": "Once more, please."}]
            again = {"messages": turn, "max_tokens": 24, "temperature": 0}
            assert pick(post(server, path, again)) == pick(post(drafted, path, again))


@pytest.mark.parametrize("draft", [["--draft", "ngram"], ["-md", str(MODEL)]])
def test_speculative_decoding_serves_what_plain_decoding_serves(server, make_server, draft):
    """`serve --draft ngram` and `serve -md MODEL` (the model drafting for itself): the same
    completions as the plain server, greedy and seeded, the second turn of a chat reusing the
    cache (the draft model's cache follows it)."""
    assert_same_answers(server, make_server(*draft))


def test_self_drafts_serve_what_plain_decoding_serves(make_server, tmp_path):
    """`serve --draft self` on a .flm under a budget (hybrid: part of the FFN resident): the
    same answers as the plain server with the same model and budget."""
    flm = tmp_path / "smollm2.flm"
    subprocess.run([str(BINARY), "convert", "-m", str(MODEL), "-o", str(flm)], check=True,
                   capture_output=True, timeout=300)
    budget = ["--mem-budget", "110M", "--mode", "hybrid"]
    plain = make_server(*budget, model=flm)
    drafted = make_server(*budget, "--draft", "self", "--draft-p-min", "0", model=flm)
    assert_same_answers(plain, drafted)


def test_parallel_requests_get_what_each_gets_alone(server, make_server):
    """`serve --parallel 4`: six requests at once (two wait for a slot), each answered with
    what the one-at-a-time server answers it, streamed or not, greedy and seeded."""
    parallel = make_server("--parallel", "4", "--max-queue", "4", context=4 * CONTEXT)
    bodies = [
        {"prompt": COUNTING, "max_tokens": 24, "temperature": 0},
        {"prompt": "The Elliots of Kellynch Hall", "max_tokens": 20, "temperature": 0.8,
         "seed": 7},
        {"messages": CHAT, "max_tokens": 16, "temperature": 0},
        {"messages": [{"role": "user", "content": "Write a haiku about flash memory."}],
         "max_tokens": 20, "temperature": 0.7, "seed": 3},
        {"prompt": "def fibonacci(n):", "max_tokens": 30, "temperature": 0, "stop": ["\n\n"]},
        {"prompt": COUNTING, "max_tokens": 12, "temperature": 0, "stream": True},
    ]

    def answer(target, body):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        r = post(target, path, body, stream=body.get("stream", False))
        assert r.status_code == 200, r.text
        if body.get("stream"):
            pieces = []
            for line in r.iter_lines():
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    pieces.append(json.loads(line[6:])["choices"][0]["text"])
            return "".join(pieces)
        choice = r.json()["choices"][0]
        return (choice["message"]["content"] if "messages" in body else choice["text"],
                choice["finish_reason"], r.json()["usage"])

    alone = [answer(server, body) for body in bodies]
    together = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def worker(i):
        barrier.wait()
        together[i] = answer(parallel, bodies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for body, a, b in zip(bodies, alone, together):
        assert a == b, body
    assert_healthy(parallel)
