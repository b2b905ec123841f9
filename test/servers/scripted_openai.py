"""A real HTTP server on 127.0.0.1 answering `/v1/chat/completions` the way a test scripts it:
a well-formed SSE stream, a silent server, a trickle, a cut or malformed stream, an error event,
an HTTP error or a dropped connection. It records every request (headers and JSON body) and
notices when the client hangs up, so tests can check what went over the wire and that a stopped
request really closed its connection. The model path itself is tested against `transformers serve`.
"""

from __future__ import annotations

import enum
import http.server
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HANG_LIMIT_S = 30.0  # a silent or trickling handler gives up after this (tests end far sooner)


class Mode(enum.Enum):
    OK = "ok"  # `chunks` as content deltas, a finish chunk, an optional usage chunk, [DONE]
    SILENT = "silent"  # headers never come: waits until the client hangs up or the server stops
    TRICKLE = "trickle"  # one content delta every `trickle_s`, never finishing
    CHUNKS_THEN_TRICKLE = "chunks_then_trickle"  # `chunks`, then TRICKLE
    CUT = "cut"  # content deltas, then the connection closes without a finish_reason
    MALFORMED = "malformed"  # a data line that is not JSON
    ERROR_EVENT = "error_event"  # a content delta, then `data: {"error": ...}`
    HTTP_ERROR = "http_error"  # `status` with a JSON error body
    DROP = "drop"  # closes the connection without answering
    FLOOD = "flood"  # ignores max_tokens: `chunks` over and over, as fast as it can, no finish
    ERROR_FLOOD = "error_flood"  # `status` with an endless error body
    REDIRECT = "redirect"  # `status` (a 3xx) with `Location: location`


@dataclass
class Recorded:
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]


@dataclass
class Script:
    mode: Mode = Mode.OK
    # Content deltas; a dict is sent as the whole delta (e.g. {"reasoning_content": "..."}).
    chunks: list[str | dict[str, str]] = field(
        default_factory=lambda: ["<answer> (B) ", "right </answer>"]
    )
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens) in a final chunk
    status: int = 500
    error_body: str = '{"error": {"message": "model exploded", "code": 500}}'
    trickle_s: float = 0.05
    # OK mode: wait this long before answering (a server taking a fixed time per request; each
    # request has its own thread, so concurrent requests overlap like a batching server), or a
    # function of the request body giving the wait.
    delay_s: float | Callable[[dict[str, Any]], float] = 0.0
    # OK mode: the content deltas as a function of the request body (instead of `chunks`).
    reply: Callable[[dict[str, Any]], list[str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    # OK mode: the final chunk's `usage` object as sent (any JSON), instead of `usage`.
    usage_body: Any = None
    location: str = ""  # REDIRECT: the Location header
    # FLOOD: this JSON text padded into every chunk (a server whose envelope is huge).
    padding: str = ""
    # Answer the first `busy_times` requests with `status` and `headers` (429/503 tests), then
    # as the mode says.
    busy_times: int = 0


def _chunk(delta: dict[str, Any], finish: str | None = None, usage=None, choices=True) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if isinstance(usage, tuple):
        prompt, completion = usage
        data["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    elif usage is not None:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


class ScriptedOpenAIServer:
    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[Recorded] = []
        self.client_hung_up = threading.Event()
        self.sent_bytes = 0  # body bytes written by FLOOD and ERROR_FLOOD
        self._stopping = threading.Event()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_quiet(self, connection: socket.socket, seconds: float) -> bool:
        """Wait without sending; True as soon as the client closed the connection."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([connection], [], [], min(0.05, remaining))
            if readable and connection.recv(1, socket.MSG_PEEK) == b"":
                self.client_hung_up.set()
                return True
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: ScriptedOpenAIServer

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        owner = self.owner
        body = json.loads(raw or b"{}")
        owner.requests.append(Recorded({k.lower(): v for k, v in self.headers.items()}, body))
        script = owner.script
        try:
            self._answer(script, body)
        except (BrokenPipeError, ConnectionResetError):
            owner.client_hung_up.set()

    def _answer(self, script: Script, body: dict[str, Any]) -> None:
        owner = self.owner
        delay = script.delay_s(body) if callable(script.delay_s) else script.delay_s
        if script.mode is Mode.OK and delay > 0 and owner.wait_quiet(self.connection, delay):
            return
        if script.mode is Mode.DROP:
            self.close_connection = True
            return
        if script.mode is Mode.SILENT:
            owner.wait_quiet(self.connection, HANG_LIMIT_S)
            self.close_connection = True
            return
        if script.mode is Mode.HTTP_ERROR or len(owner.requests) <= script.busy_times:
            body = script.error_body.encode()
            self.send_response(script.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self._extra_headers(script)
            self.end_headers()
            self.wfile.write(body)
            return
        if script.mode is Mode.REDIRECT:
            self.send_response(script.status)
            self.send_header("Location", script.location)
            self.send_header("Content-Length", "0")
            self._extra_headers(script)
            self.end_headers()
            return
        if script.mode is Mode.ERROR_FLOOD:
            self.send_response(script.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self._flood(b'{"error": {"message": "' + b"x" * 65536)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self._extra_headers(script)
        self.end_headers()
        write = self.wfile.write
        write(_chunk({"role": "assistant", "content": ""}))
        if script.mode is Mode.FLOOD:
            data = b"".join(_chunk({"content": c} if isinstance(c, str) else c)
                            for c in script.chunks)  # fmt: skip
            if script.padding:
                data = data.replace(b'"id": "chatcmpl-test"',
                                    b'"id": "chatcmpl-test", "pad": ' + script.padding.encode())
            self._flood(data)
            return
        if script.mode is Mode.MALFORMED:
            write(b'data: {"choices": [{"delta": {"content": "<obs\n\ndata: {not json\n\n')
        elif script.mode is Mode.ERROR_EVENT:
            write(_chunk({"content": "<observe>"}))
            write(b'data: {"error": {"message": "CUDA out of memory", "code": 500}}\n\n')
        elif script.mode in (Mode.TRICKLE, Mode.CHUNKS_THEN_TRICKLE):
            if script.mode is Mode.CHUNKS_THEN_TRICKLE:
                for delta in script.chunks:
                    write(_chunk(delta if isinstance(delta, dict) else {"content": delta}))
            for i in range(int(HANG_LIMIT_S / script.trickle_s)):
                write(_chunk({"content": f"tok{i} "}))
                self.wfile.flush()
                if owner.wait_quiet(self.connection, script.trickle_s):
                    return
        else:  # OK, CUT
            chunks = script.reply(body) if script.reply is not None else script.chunks
            for delta in chunks:
                write(_chunk(delta if isinstance(delta, dict) else {"content": delta}))
            if script.mode is Mode.OK:
                write(_chunk({}, finish="stop"))
                if script.usage_body is not None:
                    write(_chunk({}, usage=script.usage_body, choices=False))
                elif script.usage is not None:
                    write(_chunk({}, usage=script.usage, choices=False))
                write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _extra_headers(self, script: Script) -> None:
        for name, value in script.headers.items():
            self.send_header(name, value)

    def _flood(self, data: bytes) -> None:
        """Write `data` again and again until the client hangs up (or HANG_LIMIT_S)."""
        owner = self.owner
        deadline = time.monotonic() + HANG_LIMIT_S
        self.close_connection = True
        while time.monotonic() < deadline and not owner._stopping.is_set():
            self.wfile.write(data)
            owner.sent_bytes += len(data)
