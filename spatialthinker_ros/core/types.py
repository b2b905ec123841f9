"""What the engine and its backends share: errors, generation results, answers, the backend
protocol. Imports nothing else from the package but the scene dataclasses and the prompt
version, so the engine and every backend import it without a cycle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from .prompt import PROMPT_VERSION
from .scene import Reasoning

Size = tuple[int, int]  # (width, height)
TextCallback = Callable[[str], None]
StopCallback = Callable[[], bool]
# Fed each piece of generated text, in order; True ends generation there, normally (the text up
# to and including that piece is the output). See `engine.SceneGraphEnd`.
TextEnd = Callable[[str], bool]
# A fresh TextEnd per prompt (generate_many).
TextEndFactory = Callable[[], TextEnd]

# What `answer(..., stop_after=...)` accepts: "" (the full answer) or "scene_graph" (generation
# ends as soon as the scene graph is complete; the result has no answer, status OK).
STOP_AFTER_SCENE_GRAPH = "scene_graph"
STOP_AFTER = ("", STOP_AFTER_SCENE_GRAPH)


def stop_after_problem(value: object) -> str | None:
    """Why `value` is not a stop_after (one of STOP_AFTER), or None."""
    if value in STOP_AFTER:
        return None
    return f"stop_after must be one of {', '.join(repr(s) for s in STOP_AFTER)}; got {value!r}"


class EngineError(RuntimeError):
    """Any failure of the engine, with a message meant for the user."""


class ModelLoadError(EngineError):
    """The model could not be loaded (missing directory, offline without a cache, bad option)."""


class InvalidQuestion(EngineError):
    """The question or its choices are not acceptable (empty, too long, control tokens)."""


class GenerationStopped(EngineError):
    """`should_stop` returned True (cancel, timeout or shutdown) before generation finished."""


class BackendUnavailable(EngineError):
    """The server could not be reached (refused, reset, DNS) after the retries, or it dropped the
    connection mid-answer."""


class BackendTimeout(EngineError):
    """The request (or the whole call, for several questions) did not finish within timeout_s."""


class BackendBusy(EngineError):
    """The server said it is overloaded (HTTP 429/503) and its Retry-After did not fit within
    the call's deadline: retryable (the node answers BUSY)."""


@dataclass(frozen=True)
class Timings:
    preprocess_s: float = 0.0  # resize, prompt, processor, transfer to device
    generate_s: float = 0.0  # prefill + decode
    parse_s: float = 0.0  # parse + box mapping

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.generate_s + self.parse_s


@dataclass(frozen=True)
class Generation:
    """What a backend returns for one prompt."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    preprocess_s: float = 0.0
    generate_s: float = 0.0
    token_ids: tuple[int, ...] = ()  # generated ids, when the backend knows them


@dataclass(frozen=True)
class Result:
    """One answered question. Boxes in `reasoning.scene_graph` are in source-image pixels."""

    reasoning: Reasoning
    question: str
    choices: tuple[str, ...]
    source_size: Size  # (w, h) of the image given to `answer`
    model_size: Size  # (w, h) fed to the model and stated in the prompt
    prompt_tokens: int
    generated_tokens: int
    timings: Timings = field(default_factory=Timings)
    prompt_version: str = PROMPT_VERSION
    generated_token_ids: tuple[int, ...] = ()
    model: str = ""  # the model reference that produced it
    stop_after: str = ""  # as asked: "scene_graph" = generation ended with the scene graph

    @property
    def raw(self) -> str:
        return self.reasoning.raw


class GenerationBackend(Protocol):
    """Turns (image already sized for the model, prompt text) into generated text."""

    name: str
    # True when the backend's own processor resizes the frame to the model size (the engine then
    # hands it the source frame); False when it needs the frame already resized.
    resizes_to_model_size: bool
    # True when generate() may run on several threads at once (a server batches them).
    concurrent_requests: bool

    def load(self) -> None: ...

    def unload(self) -> None: ...

    @property
    def loaded(self) -> bool: ...

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCallback | None = None,
        end_when: TextEnd | None = None,
    ) -> Generation: ...

    def generate_many(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        end_when: TextEndFactory | None = None,
        should_stop: StopCallback | None = None,
    ) -> list[Generation]:
        """Every prompt about one image; `should_stop` (the call's one deadline, cancel) is
        polled throughout, for all prompts together."""
        ...

    def describe(self) -> dict[str, str]: ...

    def memory_stats(self) -> dict[str, float]:
        """Accelerator memory figures for diagnostics (MB); empty when there are none."""
        ...

    def release_memory(self) -> None:
        """Return cached accelerator memory after a failure such as out-of-memory."""
        ...
