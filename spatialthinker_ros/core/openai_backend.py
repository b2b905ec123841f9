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
import collections
import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from PIL import Image

from . import remote_guard as guard
from .options import OPTION_BY_NAME, EngineConfig, option_problem
from .remote_guard import display_url
from .remote_stream import (
    ReasoningJoiner,
    StreamEnd,
    chat_messages,
    delta_texts,
    generation,
    image_data_url,
)
from .types import (
    BackendBusy,
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
BUSY_STATUSES = (429, 503)  # the server is overloaded: retryable (BackendBusy)
T = TypeVar("T")

__all__ = ["BackendBusy", "BackendTimeout", "BackendUnavailable", "OpenAIBackend", "display_url"]


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
        # What messages must never show: the URL's credentials and the keys sent lately (the key
        # is read per request, so a rotated one is still hidden in a late error).
        self._url_secrets = tuple(guard.url_secrets(base_url))
        self._keys_sent: collections.deque[str] = collections.deque(maxlen=4)
        self._keys_lock = threading.Lock()  # appended on the loop thread, read on callers
        self._scrubber_for: tuple[tuple[str, ...], guard.Scrubber] | None = None
        self._log_filter = guard.ScrubLogs(self.scrubber())

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
            base_url=self.base_url, api_key="EMPTY", timeout=self.timeout_s, max_retries=0,
            http_client=guard.http_client(self.base_url, timeout=self.timeout_s),
        )
        guard.install_log_filter(self._log_filter)

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
        guard.remove_log_filter(self._log_filter)

    def describe(self) -> dict[str, str]:
        """For diagnostics: never the key, only the variable that holds it."""
        return {
            "backend": self.name,
            "base_url": self.url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout_s": f"{self.timeout_s:g}",
        }

    def scrubber(self) -> guard.Scrubber:
        """Removes the URL's credentials and the API key (the current one and the last ones
        sent), in any encoding, from a text."""
        with self._keys_lock:
            sent = tuple(self._keys_sent)
        keys = (*self._url_secrets, os.environ.get(self.api_key_env) or "", *sent)
        cached = self._scrubber_for
        if cached is None or cached[0] != keys:
            cached = self._scrubber_for = (keys, guard.Scrubber(keys))
            if hasattr(self, "_log_filter"):
                self._log_filter.scrubber = cached[1]
        return cached[1]

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
        deadline = time.monotonic() + self.timeout_s
        messages = chat_messages(image_data_url(image), prompt)
        preprocess_s = time.perf_counter() - t0
        return self._scrubbed(lambda: self._generate(
            messages, max_new_tokens, on_text, should_stop, preprocess_s, deadline, end_when))

    def generate_many(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        end_when: TextEndFactory | None = None,
        should_stop: StopCallback | None = None,
    ) -> list[Generation]:
        """One request per prompt (the server's prefix cache shares the image between them):
        one after another, or all at once with `concurrent_questions`, all within one
        timeout_s (the call's deadline, not one per question)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        url = image_data_url(image)  # encoded once for all questions
        preprocess_s = (time.perf_counter() - t0) / max(1, len(prompts))
        batch = [chat_messages(url, p) for p in prompts]

        def new_end() -> TextEnd | None:
            return end_when() if end_when is not None else None

        if not self.concurrent_questions or len(batch) < 2:
            return self._scrubbed(lambda: [
                self._generate(m, max_new_tokens, None, should_stop, preprocess_s, deadline,
                               new_end())
                for m in batch])  # fmt: skip
        return self._scrubbed(lambda: self._generate_concurrently(
            batch, max_new_tokens, preprocess_s, deadline, new_end, should_stop))

    # ------------------------------------------------------------------ calling thread

    def _scrubbed(self, call: Callable[[], T]) -> T:
        """`call()`; an error leaves without the secrets and without its cause (the client's
        exception holds the server's text, which a traceback would print)."""
        try:
            return call()
        except EngineError as exc:
            clean = self.scrubber()(str(exc))
            raise (type(exc)(clean) if clean != str(exc) or exc.__cause__ is not None
                   or exc.__context__ is not None else exc) from None  # fmt: skip

    def _timed_out(self) -> BackendTimeout:
        return BackendTimeout(f"{self.url} did not answer within {self.timeout_s:g} s")

    def _generate_concurrently(self, batch: list[list[dict[str, Any]]], max_new_tokens: int,
                               preprocess_s: float, deadline: float,
                               new_end: Callable[[], TextEnd | None],
                               should_stop: StopCallback | None) -> list[Generation]:
        futures = [self._submit(self._collect(m, max_new_tokens, preprocess_s, deadline,
                                              new_end()))
                   for m in batch]  # fmt: skip
        try:
            while True:
                left = deadline - time.monotonic()
                done, pending = concurrent.futures.wait(
                    futures, max(0.0, min(POLL_S, left)),
                    return_when=concurrent.futures.FIRST_EXCEPTION,
                )
                for future in futures:  # the first error, in question order
                    if future in done and (future.cancelled() or future.exception() is not None):
                        self._result(future)
                if not pending:
                    return [self._result(f) for f in futures]
                if should_stop is not None and should_stop():
                    raise GenerationStopped("generation stopped before it finished")
                if left <= 0:
                    raise self._timed_out()
        finally:
            for future in futures:
                future.cancel()

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
        deadline: float,
        end_when: TextEnd | None = None,
    ) -> Generation:
        t0 = time.perf_counter()
        if time.monotonic() >= deadline:  # an earlier question of the call used it up
            raise self._timed_out()
        events: queue.SimpleQueue = queue.SimpleQueue()
        future = self._submit(self._stream(messages, max_new_tokens, deadline, events.put))
        future.add_done_callback(lambda _f: events.put(_END))
        text = ReasoningJoiner(on_text, end_when, self.scrubber())
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
                    return generation(text.finish(), text.chunks, StreamEnd(None, "end_when"),
                                      preprocess_s, time.perf_counter() - t0)
                if should_stop is not None and should_stop():
                    raise GenerationStopped("generation stopped before it finished")
                if time.monotonic() > deadline:
                    raise self._timed_out()
            end = self._result(future)
        finally:
            future.cancel()  # no-op once done; else cancels the request and closes its connection
        return generation(text.finish(), text.chunks, end, preprocess_s, time.perf_counter() - t0)

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
        deadline: float,
        emit: Callable[[tuple[str, str]], None],
        ended: Callable[[], bool] = lambda: False,
    ) -> StreamEnd:
        """Run one streamed request, passing each delta's (reasoning, content) to `emit`; stop
        reading (and close the stream) once `ended()`, or once the text passes its cap."""
        limits = guard.Limits.for_tokens(max_new_tokens)
        guard.LIMITS.set(limits)  # this task's requests: read by the response hook
        stream = await self._open(messages, max_new_tokens, deadline)
        usage, finish, kept = None, None, 0
        try:
            async for chunk in stream:
                usage = guard.field(chunk, "usage") or usage
                choices = guard.field(chunk, "choices")
                for choice in choices if isinstance(choices, list) else ():
                    texts = delta_texts(guard.field(choice, "delta"))
                    kept += len(texts[0].encode()) + len(texts[1].encode())
                    if kept > limits.text_bytes:
                        raise EngineError(
                            f"{self.url} streamed more than {limits.text_bytes} bytes of text "
                            f"for max_new_tokens = {max_new_tokens} (does it ignore "
                            "max_tokens?): stopped reading")
                    if any(texts):
                        emit(texts)
                    reason = guard.field(choice, "finish_reason")
                    finish = reason if isinstance(reason, str) and reason else finish
                if ended():
                    return StreamEnd(usage, "end_when")
        except Exception as exc:  # noqa: BLE001 - every transport/protocol failure, mapped
            raise self._map_error(exc, mid_answer=True, max_new_tokens=max_new_tokens) from exc
        finally:
            await stream.close()
        if finish is None:  # a crashed server or proxy can end the stream cleanly but early
            raise EngineError(f"{self.url} ended the stream before the answer finished")
        return StreamEnd(usage, finish)

    async def _open(self, messages: list[dict[str, Any]], max_new_tokens: int,
                    deadline: float) -> Any:
        """Start the streamed request, retrying connection failures with exponential backoff
        and 429/503 after their Retry-After, while the call's deadline allows."""
        # The key is read from the environment for every request (rotation without a restart)
        # and never stored in parameters, diagnostics or messages.
        if self._client is None:
            raise EngineError(f"request to {self.url} canceled: backend unloaded")
        key = os.environ.get(self.api_key_env) or "EMPTY"
        with self._keys_lock:
            if key != "EMPTY" and key not in self._keys_sent:
                self._keys_sent.append(key)
        client = self._client.with_options(api_key=key)
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
                error = self._map_error(exc, mid_answer=False, max_new_tokens=max_new_tokens)
                if isinstance(error, BackendBusy):
                    wait = guard.retry_after_s(getattr(getattr(exc, "response", None),
                                                       "headers", None))  # fmt: skip
                elif isinstance(error, BackendUnavailable):
                    wait = min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S)
                else:
                    raise error from exc
                if wait is None or attempt == self.retries or \
                        time.monotonic() + wait >= deadline:
                    raise error from exc
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _collect(
        self,
        messages: list[dict[str, Any]],
        max_new_tokens: int,
        preprocess_s: float,
        deadline: float,
        end_when: TextEnd | None = None,
    ) -> Generation:
        t0 = time.perf_counter()
        text = ReasoningJoiner(None, end_when, self.scrubber())
        end = await self._stream(messages, max_new_tokens, deadline, text.add,
                                 lambda: text.ended)  # fmt: skip
        return generation(text.finish(), text.chunks, end, preprocess_s, time.perf_counter() - t0)

    @staticmethod
    async def _shutdown(client: Any) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    def _map_error(self, exc: Exception, *, mid_answer: bool,
                   max_new_tokens: int = 0) -> EngineError:
        """A short, sanitised reason: the server's own text (an error body may echo request
        headers, the key among them) is never passed on, only its HTTP status and an error
        type of `remote_guard.ERROR_TYPES`."""
        import openai

        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, guard.ResponseTooLarge):
            if 200 <= exc.status < 300:
                return EngineError(
                    f"{self.url} sent more than {exc.limit} bytes for max_new_tokens = "
                    f"{max_new_tokens} (does it ignore max_tokens?): stopped reading")
            return EngineError(f"{self.url} answered HTTP {exc.status} with a body over "
                               f"{exc.limit} bytes: stopped reading")
        if isinstance(exc, guard.RedirectRefused):
            return EngineError(f"{self.url} redirected to {exc.target}, off the configured "
                               "origin: refused (nothing was sent there)")
        if isinstance(exc, guard.CompressionRefused):
            return EngineError(f"{self.url} sent a compressed body ({exc.encoding}) although "
                               "asked for identity: refused")
        if isinstance(exc, openai.APITimeoutError):
            return self._timed_out()
        if isinstance(exc, openai.APIConnectionError):
            cause = type(exc.__cause__ or exc).__name__
            if mid_answer:
                return BackendUnavailable(f"connection to {self.url} lost mid-answer ({cause})")
            return BackendUnavailable(f"cannot reach {self.url} ({cause})")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            kind = guard.error_kind(getattr(exc, "body", None))
            if status in BUSY_STATUSES:
                wait = guard.retry_after_s(getattr(exc.response, "headers", None))
                after = f"; it asks to retry after {wait:g} s" if wait is not None else ""
                return BackendBusy(f"{self.url} is busy: HTTP {status}{kind}{after}")
            hint = ""
            if status in (401, 403) and not os.environ.get(self.api_key_env):
                hint = f" (no API key: set the environment variable {self.api_key_env})"
            return EngineError(f"{self.url} answered HTTP {status}{kind}{hint}")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            kind = guard.error_kind(getattr(exc, "body", None))
            return EngineError(f"{self.url} reported an error mid-answer{kind}")
        return EngineError(f"bad response from {self.url} ({type(exc).__name__})")
