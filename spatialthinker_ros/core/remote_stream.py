"""The remote backend's wire format: the request it sends (the prepared frame as a lossless PNG
data URL, one user turn) and how the streamed deltas become the model's text and a
`Generation` (reasoning put back between its tags, the key scrubbed, token counts validated).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from . import remote_guard as guard
from .types import Generation, TextCallback, TextEnd


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


class ReasoningJoiner:
    """Rebuilds the model's text from streamed deltas, `(reasoning, content)` pairs of strings
    (see `delta_texts`). Servers with a reasoning parser (`transformers serve`, vLLM
    `--reasoning-parser`) strip `<think>`/`</think>` and stream that section as
    `reasoning_content` (or `reasoning`): it is put back between its tags. The text passes a
    `StreamScrubber` first (a server echoing the key in the completion does not publish it).
    `end_when`: once it returns True for a piece, `ended` is set and later deltas are dropped
    (the caller then closes the stream)."""

    def __init__(self, on_text: TextCallback | None, end_when: TextEnd | None = None,
                 scrub: guard.Scrubber | None = None):
        self.on_text = on_text
        self.end_when = end_when
        self.ended = False
        self.parts: list[str] = []
        self.chunks = 0
        self.in_reasoning = False
        self._scrub = guard.StreamScrubber(scrub or guard.Scrubber(()))

    def _emit(self, text: str, final: bool = False) -> None:
        text = self._scrub.feed(text) + (self._scrub.flush() if final else "")
        if not text or self.ended:
            return
        self.parts.append(text)
        if self.on_text is not None:
            self.on_text(text)
        if self.end_when is not None and self.end_when(text):
            self.ended = True

    def add(self, delta: tuple[str, str]) -> None:
        if self.ended:
            return
        reasoning, content = delta
        if reasoning:
            self.chunks += 1
            self._emit(reasoning if self.in_reasoning else "<think>" + reasoning)
            self.in_reasoning = True
        if content:
            self.chunks += 1
            self._emit(content if not self.in_reasoning else "</think>" + content)
            self.in_reasoning = False

    def finish(self) -> str:
        self._emit("</think>" if self.in_reasoning else "", final=True)
        self.in_reasoning = False
        return "".join(self.parts)


def delta_texts(delta: Any) -> tuple[str, str]:
    """(reasoning, content) of a streamed delta; a field that is not a string counts as none
    (the client builds these objects without validating them)."""
    texts = []
    for names in (("reasoning_content", "reasoning"), ("content",)):
        value = next((v for v in (guard.field(delta, n) for n in names) if v), "")
        texts.append(value if isinstance(value, str) else "")
    return texts[0], texts[1]


@dataclass(frozen=True)
class StreamEnd:
    usage: Any  # the server's usage object, when it sent one (stream_options include_usage)
    finish_reason: str




def generation(
    text: str, chunks: int, end: StreamEnd, preprocess_s: float, generate_s: float
) -> Generation:
    """Token counts from the server's usage report when they are valid (non-negative integers),
    else unknown: 0 prompt tokens, the number of streamed chunks generated."""
    prompt_tokens = guard.token_count(guard.field(end.usage, "prompt_tokens"))
    generated = guard.token_count(guard.field(end.usage, "completion_tokens"))
    return Generation(text, prompt_tokens or 0, generated or chunks, preprocess_s, generate_s)
