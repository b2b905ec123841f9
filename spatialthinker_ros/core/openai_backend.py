"""Remote backend: SpatialThinker served by an OpenAI-compatible server (vLLM, SGLang, ...).

The engine builds the prompt and resizes the frame exactly as for the in-process backend; this
backend sends that image (lossless PNG data URL, so the stated `Image size` stays exact) and
prompt as one chat-completions request with temperature 0, streaming the text back.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Sequence

from PIL import Image

from .engine import (
    EngineConfig,
    EngineError,
    Generation,
    GenerationStopped,
    ModelLoadError,
    StopCallback,
    TextCallback,
)


class BackendUnavailable(EngineError):
    """The server could not be reached (refused, DNS, reset) after the retries."""


class BackendTimeout(EngineError):
    """The server did not answer within timeout_s."""


class _ReasoningJoiner:
    """Rebuilds the model's text from streamed deltas. Servers with a reasoning parser
    (`transformers serve`, vLLM `--reasoning-parser`) strip `<think>`/`</think>` and stream that
    section as `reasoning_content` (or `reasoning`): it is put back between its tags."""

    def __init__(self, on_text: TextCallback | None):
        self.on_text = on_text
        self.parts: list[str] = []
        self.chunks = 0
        self.in_reasoning = False

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.on_text is not None:
            self.on_text(text)

    def add(self, delta) -> None:
        extra = delta.model_extra or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        if reasoning:
            self.chunks += 1
            self._emit(reasoning if self.in_reasoning else "<think>" + reasoning)
            self.in_reasoning = True
        if delta.content:
            self.chunks += 1
            self._emit(delta.content if not self.in_reasoning else "</think>" + delta.content)
            self.in_reasoning = False

    def finish(self) -> None:
        if self.in_reasoning:
            self._emit("</think>")
            self.in_reasoning = False


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    name = "openai"
    resizes_to_model_size = False  # a server's processor has its own pixel budget: send it resized

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 2,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = retries
        self._client = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> OpenAIBackend:
        if not config.base_url.startswith(("http://", "https://")):
            raise ModelLoadError(f"base_url must be an http(s) URL, got {config.base_url!r}")
        return cls(
            config.base_url,
            config.api_model or config.model,
            config.api_key_env,
            config.timeout_s,
            config.retries,
        )

    @property
    def loaded(self) -> bool:
        return self._client is not None

    def load(self) -> None:
        """Create the client (no request is sent: a server that is down fails the first answer)."""
        from openai import OpenAI

        # The key is read from the environment here and never stored in parameters or logs.
        key = os.environ.get(self.api_key_env, "") or "EMPTY"
        self._client = OpenAI(
            base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=0
        )

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model}

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> Generation:
        t0 = time.perf_counter()
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        preprocess_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        stream = self._open_stream(messages, max_new_tokens)
        text = _ReasoningJoiner(on_text)
        usage = None
        try:
            for chunk in stream:
                if should_stop is not None and should_stop():
                    raise GenerationStopped("generation stopped before it finished")
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or ():
                    if choice.delta is not None:
                        text.add(choice.delta)
            text.finish()
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - map every transport/protocol failure
            raise self._map_error(exc) from exc
        finally:
            stream.close()
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        generated = int(getattr(usage, "completion_tokens", 0) or text.chunks)
        return Generation(
            "".join(text.parts), prompt_tokens, generated, preprocess_s, time.perf_counter() - t1
        )

    def generate_many(
        self, image: Image.Image, prompts: Sequence[str], *, max_new_tokens: int
    ) -> list[Generation]:
        # The server's prefix cache shares the image across these requests (vLLM, SGLang).
        return [self.generate(image, p, max_new_tokens=max_new_tokens) for p in prompts]

    def _open_stream(self, messages: list, max_new_tokens: int):
        """Start the streamed request, retrying connection failures with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=0.0,  # greedy, as evaluated; servers default to sampling
                    max_tokens=max_new_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            except Exception as exc:  # noqa: BLE001
                error = self._map_error(exc)
                if not isinstance(error, BackendUnavailable) or attempt == self.retries:
                    raise error from exc
                time.sleep(min(0.25 * 2**attempt, 4.0))
        raise AssertionError("unreachable")

    def _map_error(self, exc: Exception) -> EngineError:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return BackendTimeout(f"{self.base_url} did not answer within {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return BackendUnavailable(f"cannot reach {self.base_url}: {cause}")
        if isinstance(exc, openai.APIStatusError):
            body = (exc.response.text or "")[:300] if exc.response is not None else ""
            return EngineError(f"{self.base_url} answered HTTP {exc.status_code}: {body}")
        return EngineError(f"bad response from {self.base_url}: {type(exc).__name__}: {exc}")
