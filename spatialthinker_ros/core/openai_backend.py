"""Remote backend: SpatialThinker served by an OpenAI-compatible server (vLLM, SGLang, ...).

The engine builds the prompt and resizes the frame exactly as for the in-process backend; this
backend sends that image (lossless PNG data URL, so the stated `Image size` and the pixels stay
exact) and prompt as one chat-completions request with temperature 0, streaming the text back.

Requests run on the official `openai` async client, on one event-loop thread owned by the backend;
the calling thread receives the streamed deltas through a queue, so `on_text` runs on the caller's
thread and `should_stop` and the `timeout_s` deadline are checked every few milliseconds even
while the server is silent (queueing, prefill): stopping cancels the request and closes its
connection, which makes vLLM and SGLang abort it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from .options import OPTION_BY_NAME, EngineConfig, option_problem
from .types import (
    BackendTimeout,
    BackendUnavailable,
    EngineError,
    Generation,
    GenerationStopped,
    ModelLoadError,
    StopCallback,
    TextCallback,
    TextEnd,
    TextEndFactory,
)

POLL_S = 0.02  # how often generate() checks should_stop and the deadline while the server is quiet
BACKOFF_S = 0.25  # first retry delay after a connection failure; doubles per retry
MAX_BACKOFF_S = 4.0
_END = object()  # queue marker: the request finished (result or error in its future)


def display_url(url: str) -> str:
    """The URL without credentials or query (`http://user:secret@host/v1?key=...`), for messages
    and diagnostics."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def image_data_url(image: Image.Image) -> str:
    """Lossless PNG data URL: the server decodes exactly the pixels and size the engine prepared."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_messages(image_url: str, prompt: str) -> list[dict[str, Any]]:
    """One user turn, image first, as the model card and the in-process backend do."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": prompt},
            ],
        }
    ]


class _ReasoningJoiner:
    """Rebuilds the model's text from streamed deltas. Servers with a reasoning parser
    (`transformers serve`, vLLM `--reasoning-parser`) strip `<think>`/`</think>` and stream that
    section as `reasoning_content` (or `reasoning`): it is put back between its tags.
    `end_when`: once it returns True for a piece, `ended` is set and later deltas are dropped
    (the caller then closes the stream)."""

    def __init__(self, on_text: TextCallback | None, end_when: TextEnd | None = None):
        self.on_text = on_text
        self.end_when = end_when
        self.ended = False
        self.parts: list[str] = []
        self.chunks = 0
        self.in_reasoning = False

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.on_text is not None:
            self.on_text(text)
        if self.end_when is not None and self.end_when(text):
            self.ended = True

    def add(self, delta: Any) -> None:
        if self.ended:
            return
        extra = getattr(delta, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        if reasoning:
            self.chunks += 1
            self._emit(reasoning if self.in_reasoning else "<think>" + reasoning)
            self.in_reasoning = True
        if delta.content:
            self.chunks += 1
            self._emit(delta.content if not self.in_reasoning else "</think>" + delta.content)
            self.in_reasoning = False

    def finish(self) -> str:
        if self.in_reasoning:
            self._emit("</think>")
            self.in_reasoning = False
        return "".join(self.parts)


@dataclass(frozen=True)
class _StreamEnd:
    usage: Any  # the server's usage object, when it sent one (stream_options include_usage)
    finish_reason: str


class _EventLoopThread:
    """An asyncio loop on a daemon thread: the client and its connections live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="openai-backend", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout_s: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()


class OpenAIBackend:
    name = "openai"
    resizes_to_model_size = False  # a server's processor has its own pixel budget: send it resized
    concurrent_requests = True  # a server batches requests in flight

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 2,
        concurrent_questions: bool = False,
    ):
        if option_problem(OPTION_BY_NAME["base_url"], base_url) is not None:
            raise ModelLoadError(f"base_url must be an http(s) URL, got {display_url(base_url)!r}")
        if timeout_s <= 0 or retries < 0:
            raise ModelLoadError(f"need timeout_s > 0 and retries >= 0, got {timeout_s}, {retries}")
        self.base_url = base_url.rstrip("/")
        self.url = display_url(self.base_url)  # what messages and diagnostics show
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = retries
        # answer_many: send all questions at once (the server batches them) or one by one.
        self.concurrent_questions = concurrent_questions
        self._client: Any = None
        self._runner: _EventLoopThread | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> OpenAIBackend:
        return cls(
            config.base_url,
            config.api_model or config.model,
            config.api_key_env,
            config.timeout_s,
            config.retries,
            concurrent_questions=config.batch_questions,
        )

    @property
    def loaded(self) -> bool:
        return self._client is not None

    def load(self) -> None:
        """Create the client (no request is sent: a server that is down fails the first answer)."""
        if self._client is not None:
            return
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:  # the `remote` extra: not in install_requires
            raise ModelLoadError(
                "the openai backend needs the openai client: pip install "
                f"'spatialthinker_ros[remote]' (or pip install openai) ({exc})"
            ) from exc

        # The key given here is a placeholder: each request reads the environment variable.
        self._runner = _EventLoopThread()
        self._client = AsyncOpenAI(
            base_url=self.base_url, api_key="EMPTY", timeout=self.timeout_s, max_retries=0
        )

    def unload(self) -> None:
        """Cancel requests in flight, close the connections and stop the loop thread."""
        runner, client = self._runner, self._client
        self._runner = self._client = None
        if runner is None:
            return
        try:
            runner.submit(self._shutdown(client)).result(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort: the thread stops regardless
            pass
        runner.stop(timeout_s=5.0)

    def describe(self) -> dict[str, str]:
        """For diagnostics: never the key, only the variable that holds it."""
        return {
            "backend": self.name,
            "base_url": self.url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout_s": f"{self.timeout_s:g}",
        }

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCallback | None = None,
        end_when: TextEnd | None = None,
    ) -> Generation:
        """Streams the answer; `end_when` closes the stream (the server then aborts the
        request) as soon as it returns True."""
        t0 = time.perf_counter()
        messages = chat_messages(image_data_url(image), prompt)
        preprocess_s = time.perf_counter() - t0
        return self._generate(messages, max_new_tokens, on_text, should_stop, preprocess_s,
                              end_when)

    def generate_many(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        end_when: TextEndFactory | None = None,
    ) -> list[Generation]:
        """One request per prompt (the server's prefix cache shares the image between them):
        one after another, or all at once with `concurrent_questions`, within timeout_s."""
        t0 = time.perf_counter()
        url = image_data_url(image)  # encoded once for all questions
        preprocess_s = (time.perf_counter() - t0) / max(1, len(prompts))
        batch = [chat_messages(url, p) for p in prompts]

        def new_end() -> TextEnd | None:
            return end_when() if end_when is not None else None

        if not self.concurrent_questions or len(batch) < 2:
            return [self._generate(m, max_new_tokens, None, None, preprocess_s, new_end())
                    for m in batch]  # fmt: skip
        futures = [self._submit(self._collect(m, max_new_tokens, preprocess_s, new_end()))
                   for m in batch]  # fmt: skip
        try:
            done, pending = concurrent.futures.wait(
                futures, self.timeout_s, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            for future in futures:  # the first error, in question order
                if future in done and (future.cancelled() or future.exception() is not None):
                    self._result(future)
            if pending:
                raise BackendTimeout(f"{self.url} did not answer within {self.timeout_s:g} s")
            return [self._result(f) for f in futures]
        finally:
            for future in futures:
                future.cancel()

    # ------------------------------------------------------------------ calling thread

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        runner = self._runner
        if runner is None:
            coro.close()
            raise EngineError("the openai backend is not loaded: call load() first")
        return runner.submit(coro)

    def _generate(
        self,
        messages: list[dict[str, Any]],
        max_new_tokens: int,
        on_text: TextCallback | None,
        should_stop: StopCallback | None,
        preprocess_s: float,
        end_when: TextEnd | None = None,
    ) -> Generation:
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        events: queue.SimpleQueue = queue.SimpleQueue()
        future = self._submit(self._stream(messages, max_new_tokens, events.put))
        future.add_done_callback(lambda _f: events.put(_END))
        text = _ReasoningJoiner(on_text, end_when)
        try:
            while True:
                try:
                    item = events.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                if item is _END:
                    break
                if item is not None:
                    text.add(item)
                if text.ended:  # the finally clause closes the stream
                    return _generation(text.finish(), text.chunks, _StreamEnd(None, "end_when"),
                                       preprocess_s, time.perf_counter() - t0)
                if should_stop is not None and should_stop():
                    raise GenerationStopped("generation stopped before it finished")
                if time.monotonic() > deadline:
                    raise BackendTimeout(f"{self.url} did not answer within {self.timeout_s:g} s")
            end = self._result(future)
        finally:
            future.cancel()  # no-op once done; else cancels the request and closes its connection
        return _generation(text.finish(), text.chunks, end, preprocess_s, time.perf_counter() - t0)

    def _result(self, future: concurrent.futures.Future) -> Any:
        """The request's result; its failure is already an EngineError (see `_map_error`)."""
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise EngineError(f"request to {self.url} canceled: backend unloaded") from None

    # ------------------------------------------------------------------ event-loop thread

    async def _stream(
        self,
        messages: list[dict[str, Any]],
        max_new_tokens: int,
        emit: Callable[[Any], None],
        ended: Callable[[], bool] = lambda: False,
    ) -> _StreamEnd:
        """Run one streamed request, passing each delta to `emit`; stop reading (and close the
        stream) once `ended()`."""
        stream = await self._open(messages, max_new_tokens)
        usage, finish = None, None
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or ():
                    if choice.delta is not None:
                        emit(choice.delta)
                    finish = choice.finish_reason or finish
                if ended():
                    return _StreamEnd(usage, "end_when")
        except Exception as exc:  # noqa: BLE001 - every transport/protocol failure, mapped
            raise self._map_error(exc, mid_answer=True) from exc
        finally:
            await stream.close()
        if finish is None:  # a crashed server or proxy can end the stream cleanly but early
            raise EngineError(f"{self.url} ended the stream before the answer finished")
        return _StreamEnd(usage, finish)

    async def _open(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Any:
        """Start the streamed request, retrying connection failures with exponential backoff."""
        # The key is read from the environment for every request (rotation without a restart)
        # and never stored in parameters, diagnostics or messages.
        if self._client is None:
            raise EngineError(f"request to {self.url} canceled: backend unloaded")
        client = self._client.with_options(api_key=os.environ.get(self.api_key_env) or "EMPTY")
        for attempt in range(self.retries + 1):
            try:
                return await client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=0.0,  # greedy, as evaluated; servers default to sampling
                    max_tokens=max_new_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            except Exception as exc:  # noqa: BLE001
                error = self._map_error(exc, mid_answer=False)
                if not isinstance(error, BackendUnavailable) or attempt == self.retries:
                    raise error from exc
                await asyncio.sleep(min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S))
        raise AssertionError("unreachable")

    async def _collect(
        self,
        messages: list[dict[str, Any]],
        max_new_tokens: int,
        preprocess_s: float,
        end_when: TextEnd | None = None,
    ) -> Generation:
        t0 = time.perf_counter()
        text = _ReasoningJoiner(None, end_when)
        end = await self._stream(messages, max_new_tokens, text.add, lambda: text.ended)
        return _generation(text.finish(), text.chunks, end, preprocess_s, time.perf_counter() - t0)

    @staticmethod
    async def _shutdown(client: Any) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    def _map_error(self, exc: Exception, *, mid_answer: bool) -> EngineError:
        """A short, sanitised reason: the server's own text (an error body may echo request
        headers, the key among them) is never passed on, only its HTTP status and error type."""
        import openai

        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return BackendTimeout(f"{self.url} did not answer within {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = type(exc.__cause__ or exc).__name__
            if mid_answer:
                return BackendUnavailable(f"connection to {self.url} lost mid-answer ({cause})")
            return BackendUnavailable(f"cannot reach {self.url} ({cause})")
        if isinstance(exc, openai.APIStatusError):
            hint = ""
            if exc.status_code in (401, 403) and not os.environ.get(self.api_key_env):
                hint = f" (no API key: set the environment variable {self.api_key_env})"
            kind = _error_type(getattr(exc, "body", None))
            return EngineError(f"{self.url} answered HTTP {exc.status_code}{kind}{hint}")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            kind = _error_type(getattr(exc, "body", None))
            return EngineError(f"{self.url} reported an error mid-answer{kind}")
        return EngineError(f"bad response from {self.url} ({type(exc).__name__})")


def _error_type(body: Any) -> str:
    """` (type)` from an OpenAI-style error body's `type`/`code`, if it is a short identifier;
    never the message text."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    for key in ("type", "code"):
        value = error.get(key)
        if isinstance(value, (str, int)) and re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", str(value)):
            return f" ({value})"
    return ""


def _generation(
    text: str, chunks: int, end: _StreamEnd, preprocess_s: float, generate_s: float
) -> Generation:
    """Token counts from the server's usage report, else the number of streamed chunks."""
    prompt_tokens = int(getattr(end.usage, "prompt_tokens", 0) or 0)
    generated = int(getattr(end.usage, "completion_tokens", 0) or chunks)
    return Generation(text, prompt_tokens, generated, preprocess_s, generate_s)
