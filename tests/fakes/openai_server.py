"""A loopback OpenAI-compatible chat server for tests of remote stages.

It is a real HTTP/1.1 server (stdlib ``ThreadingHTTPServer`` in a thread, 127.0.0.1, random port)
that answers ``POST /v1/chat/completions`` and ``GET /v1/models`` in the wire format vLLM's
OpenAI server uses: ``choices[0].logprobs.content[i].top_logprobs`` is a list of
``{"token", "logprob", "bytes"}`` sorted by log-probability, truncated to the requested
``top_logprobs``. Each test says how it should answer with a :class:`Reply` (or a function of the
request body returning one): P(yes), a text, a delay, an HTTP status, or a malformed body.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["Reply", "FakeOpenAIServer", "top_logprobs_for"]


@dataclass(frozen=True)
class Reply:
    """How the server answers one request.

    Attributes:
        p_yes: probability mass of the yes-tokens at the first position (the rest is no-tokens plus
            a little filler), used when ``text`` is None.
        text: answer text instead of a yes/no answer (the reasoner's JSON, or free text).
        yes_no_in_top: put yes/no tokens in top_logprobs at all (False tests the text fallback).
        status: HTTP status; not 200 sends a vLLM-style error body.
        delay_s: sleep before answering (timeouts, concurrency).
        body: raw bytes to send instead of a valid completion (malformed responses).
    """

    p_yes: float = 0.9
    text: str | None = None
    yes_no_in_top: bool = True
    status: int = 200
    delay_s: float = 0.0
    body: bytes | None = None


ReplySource = Reply | Callable[[dict[str, Any]], Reply]

# Token strings as vLLM reports them (detokenised, leading space kept) and the share of the yes
# (or no) mass each gets; fillers carry the remaining few percent.
_YES = (("Yes", 0.85), ("yes", 0.1), (" Yes", 0.05))
_NO = (("No", 0.85), ("no", 0.1), (" No", 0.05))
_FILLER = ("The", "I", "**", "Based", "There", "Y", "N", "This", "In", "A", "Maybe", "It", "Looking", "\n",
           "Sure", "From", "Certainly", "Unfortunately", "Absolutely", "Definitely", "Nope", "YES")
_FILLER_MASS = 0.03


def top_logprobs_for(p_yes: float, k: int, yes_no: bool = True) -> list[dict[str, Any]]:
    """The top-``k`` first-token alternatives of a model that says yes with probability ``p_yes``."""
    probs: list[tuple[str, float]] = []
    if yes_no:
        mass = 1.0 - _FILLER_MASS
        probs += [(t, mass * p_yes * s) for t, s in _YES] + [(t, mass * (1 - p_yes) * s) for t, s in _NO]
        fill = _FILLER_MASS
    else:
        fill = 1.0
    weights = [0.5 ** (i + 1) for i in range(len(_FILLER))]
    probs += [(t, fill * w / sum(weights)) for t, w in zip(_FILLER, weights)]
    entries = [{"token": t, "logprob": max(math.log(p), -9999.0) if p > 0 else -9999.0,
                "bytes": list(t.encode("utf-8"))} for t, p in probs]
    entries.sort(key=lambda e: e["logprob"], reverse=True)
    return entries[:k]


def chat_completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """A chat-completion response body for ``body`` answered as ``reply`` says."""
    k = int(body.get("top_logprobs") or 0)
    if reply.text is not None:
        content = reply.text
        positions = [[{"token": w, "logprob": 0.0, "bytes": list(w.encode())}] for w in content.split(" ")[:8]]
    else:
        tops = top_logprobs_for(reply.p_yes, max(k, 1), reply.yes_no_in_top)
        content = tops[0]["token"]  # temperature 0: the argmax is sampled
        positions = [tops]
    logprobs = None
    if body.get("logprobs"):
        logprobs = {"content": [{**pos[0], "top_logprobs": pos[:k]} for pos in positions]}
    n_prompt = 17 + sum(len(json.dumps(m)) // 4 for m in body.get("messages", []))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None, "annotations": None,
                        "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
            "logprobs": logprobs,
            "finish_reason": "length" if reply.text is None else "stop",
            "stop_reason": None,
        }],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + len(positions),
                  "completion_tokens": len(positions), "prompt_tokens_details": None},
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


@dataclass
class _State:
    reply: ReplySource
    models: tuple[str, ...]
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[socket.socket] = field(default_factory=set)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.connection)
        super().finish()

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m, "parent": None,
                 "max_model_len": 4096} for m in self.server.state.models]
        self._send(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        st = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})
        body = json.loads(raw)
        body["_headers"] = {k.lower(): v for k, v in self.headers.items()}
        with st.lock:
            st.requests.append(body)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            reply = st.reply(body) if callable(st.reply) else st.reply
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.body is not None:
                return self._send(reply.status, reply.body)
            if reply.status != 200:
                err = {"message": f"fake failure {reply.status}", "type": "InternalServerError",
                       "param": None, "code": reply.status}
                return self._send(reply.status, {"error": err})
            if body.get("model") not in st.models:
                err = {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError",
                       "param": None, "code": 404}
                return self._send(404, {"error": err})
            self._send(200, chat_completion(body, reply))
        finally:
            with st.lock:
                st.in_flight -= 1

    def _send(self, status: int, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout test) or the server is stopping
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: _State, port: int = 0) -> None:
        self.state = state
        super().__init__(("127.0.0.1", port), _Handler)


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer(Reply(p_yes=0.8)) as srv:``; point stages at ``srv.url``.

    Attributes:
        requests: every chat-completion body received (plus ``_headers``), in arrival order.
        max_in_flight: the most requests the server was answering at the same time.
    """

    def __init__(self, reply: ReplySource = Reply(), models: tuple[str, ...] = ("fake-vlm",)) -> None:
        self._state = _State(reply=reply, models=models)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def set_reply(self, reply: ReplySource) -> None:
        self._state.reply = reply

    def start(self, port: int | None = None) -> "FakeOpenAIServer":
        # A port is given to restart on the same address (the breaker recovery tests).
        self._server = _Server(self._state, port or 0)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and drop open keep-alive connections, as a crashed server would."""
        if self._server is None:
            return
        self._server.shutdown()
        with self._state.lock:
            conns = list(self._state.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
