"""SpatialThinkerEngine: one image + question(s) in, parsed and box-mapped results out.

The engine owns what must be identical whatever runs the model: resizing the frame to the size
Qwen2.5-VL uses (multiples of 28 within the pixel budget), stating exactly that size in the
prompt, parsing the output and mapping its boxes back to source-image pixels. A backend only
turns (resized image, prompt text) into generated text: `TransformersBackend` in process, or the
OpenAI-compatible remote backend (`openai_backend.py`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .geometry import fit_to_pixel_budget, map_scene_graph
from .openai_backend import OpenAIBackend
from .options import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    EngineConfig,
)
from .parsing import StreamParser, parse_output, parse_until_scene
from .prompt import build_prompt, question_problem
from .scene import ParseStatus, Reasoning, SceneGraph
from .transformers_backend import TransformersBackend
from .types import (
    STOP_AFTER,
    STOP_AFTER_SCENE_GRAPH,
    BackendTimeout,
    EngineError,
    Generation,
    GenerationBackend,
    GenerationStopped,
    InvalidQuestion,
    ModelLoadError,
    Result,
    Size,
    StopCallback,
    TextCallback,
    Timings,
    stop_after_problem,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MODEL",
    "EngineConfig",
    "EngineError",
    "Generation",
    "GenerationBackend",
    "GenerationStopped",
    "InvalidQuestion",
    "ModelLoadError",
    "PreparedImage",
    "Result",
    "STOP_AFTER",
    "SceneGraphEnd",
    "SpatialThinkerEngine",
    "Timings",
]

ImageInput = Image.Image | np.ndarray
QuestionInput = str | tuple[str, Sequence[str]]
# Called once per answer, as soon as `</scene>` closes: the graph with boxes in source pixels,
# and the observation text before it.
SceneGraphCallback = Callable[[SceneGraph, str], None]


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # resized to model_size, RGB
    source_size: Size
    model_size: Size


def _as_pil(image: ImageInput, max_image_pixels: int) -> Image.Image:
    if isinstance(image, Image.Image):
        pixels = image.width * image.height
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise EngineError(
                f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
            )
        pixels = image.shape[0] * image.shape[1]
    else:
        raise EngineError(f"expected a PIL image or numpy RGB array, got {type(image).__name__}")
    if pixels > max_image_pixels:
        raise EngineError(
            f"image of {pixels} pixels exceeds max_image_pixels ({max_image_pixels})"
        )
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _normalise_question(item: QuestionInput) -> tuple[str, tuple[str, ...]]:
    if isinstance(item, str):
        return item, ()
    question, choices = item
    return question, tuple(choices)


def to_source_pixels(reasoning: Reasoning, prepared: PreparedImage) -> Reasoning:
    """`reasoning` with its boxes mapped from the model's frame to source pixels. Boxes that lie
    outside the image (or collapse to a line) carry no place: they are dropped (the object stays,
    without a box) and an OK answer becomes PARTIAL with the reason."""
    graph = map_scene_graph(reasoning.scene_graph, prepared.model_size, prepared.source_size)
    notes = []
    objects = []
    for obj in graph.objects:
        if obj.box is not None and (obj.box.width <= 0.0 or obj.box.height <= 0.0):
            width, height = prepared.source_size
            notes.append(f"box of {obj.id!r} lies outside the {width} x {height} image or has "
                         "no area (dropped the box)")
            obj = replace(obj, box=None)
        objects.append(obj)
    if not notes:
        return replace(reasoning, scene_graph=graph)
    message = "; ".join(m for m in (reasoning.message, *notes) if m)
    status = ParseStatus.PARTIAL if reasoning.status is ParseStatus.OK else reasoning.status
    return replace(reasoning, scene_graph=graph.with_objects(tuple(objects)), status=status,
                   message=message)


def scene_graph_complete(text: str) -> bool:
    """True when `text` holds a complete scene graph: its first `<scene>` closed by `</scene>`
    outside JSON strings (`parsing.StreamParser`'s rule, the parser's)."""
    return StreamParser().feed(text) is not None


class SceneGraphEnd:
    """`end_when` for stop_after="scene_graph": True from the piece of text that completes the
    scene graph on. A `parsing.StreamParser` follows the text (linear in its length, looking
    only when a piece holds `>` or a newline), so the stop is where the streamed graph is
    published, by the parser's own rule."""

    def __init__(self) -> None:
        self._parser = StreamParser()
        self.done = False

    def __call__(self, delta: str) -> bool:
        if not self.done:
            self.done = self._parser.feed(delta) is not None
        return self.done


class _SceneWatcher:
    """Wraps `on_text`: a `parsing.StreamParser` hands over the scene graph once, as soon as it
    is complete (where stop_after="scene_graph" stops); its boxes are mapped to source pixels
    and it goes to `on_scene_graph` with the observation."""

    def __init__(self, prepared: PreparedImage, on_text: TextCallback | None,
                 on_scene_graph: SceneGraphCallback) -> None:
        self._prepared = prepared
        self._on_text = on_text
        self._on_scene_graph = on_scene_graph
        self._parser = StreamParser()
        self.graph: SceneGraph | None = None

    def __call__(self, delta: str) -> None:
        if self.graph is None:
            graph = self._parser.feed(delta)
            if graph is not None:
                observation = self._parser.scene_observation
                partial = Reasoning(raw="", observation=observation, scene_graph=graph)
                self.graph = to_source_pixels(partial, self._prepared).scene_graph
                self._on_scene_graph(self.graph, observation)
        if self._on_text is not None:
            self._on_text(delta)


class CallDeadline:
    """`should_stop` for one engine call: the caller's (cancel, its own deadline) or this
    call's `timeout_s`, one deadline for everything inside the call (every question of
    `answer_many`)."""

    def __init__(self, timeout_s: float, should_stop: StopCallback | None = None,
                 who: str = "the model") -> None:
        self.at = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.who = who
        self.should_stop = should_stop
        self.expired = False  # this deadline passed
        self.stopped = False  # the caller's should_stop said stop

    def __call__(self) -> bool:
        if self.stopped or self.expired:
            return True
        if self.should_stop is not None and self.should_stop():
            self.stopped = True
        elif time.monotonic() >= self.at:
            self.expired = True
        return self.stopped or self.expired

    def run(self, call: Callable):
        """`call()`; a stop this deadline caused is a BackendTimeout."""
        try:
            return call()
        except GenerationStopped:
            if self.expired and not self.stopped:
                raise BackendTimeout(
                    f"{self.who} did not answer within {self.timeout_s:g} s") from None
            raise


class SpatialThinkerEngine:
    """Loads SpatialThinker (or any Qwen2.5-VL directory) and answers spatial questions."""

    def __init__(
        self, config: EngineConfig | None = None, backend: GenerationBackend | None = None
    ):
        self.config = config or EngineConfig()
        self.config.validate()
        self.backend = backend or make_backend(self.config)
        # An in-process model and its caches are not thread-safe: one generation at a time.
        # A server takes concurrent requests (and batches them).
        self._lock = (
            None if getattr(self.backend, "concurrent_requests", False) else threading.Lock()
        )

    @property
    def loaded(self) -> bool:
        return self.backend.loaded

    def load(self) -> None:
        self.backend.load()

    def unload(self) -> None:
        self.backend.unload()

    def describe(self) -> dict[str, str]:
        return self.backend.describe()

    def memory_stats(self) -> dict[str, float]:
        """Accelerator memory figures (MB) for diagnostics; empty without an accelerator."""
        stats = getattr(self.backend, "memory_stats", None)
        return stats() if stats is not None else {}

    def release_memory(self) -> None:
        """Give cached accelerator memory back (after an out-of-memory failure)."""
        release = getattr(self.backend, "release_memory", None)
        if release is not None:
            release()

    def check_question(self, question: str, choices: Sequence[str] = ()) -> None:
        """Raise InvalidQuestion when the question or its choices cannot go to the model."""
        problem = question_problem(question, tuple(choices), self.config.max_question_chars)
        if problem is not None:
            raise InvalidQuestion(problem)

    def prepare_image(self, image: ImageInput) -> PreparedImage:
        """The size the model will see; the frame resized to it unless the backend's processor
        does that itself (the in-process one: same size, one resize instead of two)."""
        pil = _as_pil(image, self.config.max_image_pixels)
        source = pil.size
        try:
            target = fit_to_pixel_budget(*source, self.config.min_pixels, self.config.max_pixels)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        if target != source and not getattr(self.backend, "resizes_to_model_size", False):
            pil = pil.resize(target, Image.Resampling.BICUBIC)
        return PreparedImage(pil, source, target)

    def prompt_for(
        self, prepared: PreparedImage, question: str, choices: Sequence[str] = ()
    ) -> str:
        self.check_question(question, choices)
        try:
            return build_prompt(
                question, *prepared.model_size, choices or None, self.config.prompt_style
            )
        except ValueError as exc:
            raise InvalidQuestion(str(exc)) from exc

    def finish(
        self,
        generation: Generation,
        prepared: PreparedImage,
        question: str,
        choices: tuple[str, ...],
        preprocess_s: float,
        streamed_graph: SceneGraph | None = None,
        stop_after: str = "",
    ) -> Result:
        """Parse a generation and map its boxes to source pixels (`streamed_graph`: the graph
        already mapped while streaming, reused when the final parse finds the same one).
        stop_after="scene_graph": an output that ends with a complete scene graph is parsed as
        such (no answer expected); one that never completed it is parsed in full."""
        t0 = time.perf_counter()
        if stop_after == STOP_AFTER_SCENE_GRAPH and scene_graph_complete(generation.text):
            parsed = parse_until_scene(generation.text)
        else:
            parsed = parse_output(generation.text, choices or None)
        reasoning = to_source_pixels(parsed, prepared)
        if streamed_graph is not None and reasoning.scene_graph == streamed_graph:
            reasoning = replace(reasoning, scene_graph=streamed_graph)
        parse_s = time.perf_counter() - t0
        return Result(
            reasoning=reasoning,
            question=question,
            choices=choices,
            source_size=prepared.source_size,
            model_size=prepared.model_size,
            prompt_tokens=generation.prompt_tokens,
            generated_tokens=generation.generated_tokens,
            timings=Timings(preprocess_s + generation.preprocess_s, generation.generate_s, parse_s),
            generated_token_ids=generation.token_ids,
            model=self.config.model,
            stop_after=stop_after,
        )

    def answer(
        self,
        image: ImageInput,
        question: str,
        choices: Sequence[str] | None = None,
        *,
        on_text: TextCallback | None = None,
        on_scene_graph: SceneGraphCallback | None = None,
        should_stop: StopCallback | None = None,
        stop_after: str = "",
    ) -> Result:
        """Answer one question about one image (greedy). Raises EngineError subclasses only.

        `on_text` receives the generated text as it streams; `on_scene_graph` the scene graph
        (boxes in source pixels) and observation once, as soon as `</scene>` closes.
        stop_after="scene_graph" ends generation right there: the result holds the observation
        and the scene graph, no thought and no answer, status OK when both are well formed."""
        t0 = time.perf_counter()
        stop = self._deadline(should_stop)
        choices_t = tuple(choices or ())
        self.check_question(question, choices_t)
        self.check_stop_after(stop_after)
        prepared = self.prepare_image(image)
        prompt = self.prompt_for(prepared, question, choices_t)
        watcher = None
        if on_scene_graph is not None:
            watcher = _SceneWatcher(prepared, on_text, on_scene_graph)
        preprocess_s = time.perf_counter() - t0
        with self._generation_slot():
            self._require_loaded()
            generation = stop.run(lambda: self._guarded(
                lambda: self.backend.generate(
                    prepared.image,
                    prompt,
                    max_new_tokens=self.config.max_new_tokens,
                    on_text=watcher or on_text,
                    should_stop=stop,
                    end_when=SceneGraphEnd() if stop_after else None,
                )
            ))
        streamed = watcher.graph if watcher is not None else None
        return self.finish(generation, prepared, question, choices_t, preprocess_s, streamed,
                           stop_after)

    def answer_many(self, image: ImageInput, questions: Sequence[QuestionInput], *,
                    stop_after: str = "", should_stop: StopCallback | None = None,
                    ) -> list[Result]:
        """Answer several questions about one image; the backend shares the image prefix.
        `stop_after` and `should_stop` as for `answer`, for every question; `timeout_s` bounds
        the whole call (one deadline for all the questions)."""
        if not questions:
            return []
        t0 = time.perf_counter()
        stop = self._deadline(should_stop)
        self.check_stop_after(stop_after)
        items = [_normalise_question(q) for q in questions]
        for question, choices in items:
            self.check_question(question, choices)
        prepared = self.prepare_image(image)
        prompts = [self.prompt_for(prepared, q, c) for q, c in items]
        preprocess_s = time.perf_counter() - t0
        with self._generation_slot():
            self._require_loaded()
            generations = stop.run(lambda: self._guarded(
                lambda: self.backend.generate_many(
                    prepared.image,
                    prompts,
                    max_new_tokens=self.config.max_new_tokens,
                    end_when=SceneGraphEnd if stop_after else None,
                    should_stop=stop,
                )
            ))
        return [
            self.finish(g, prepared, q, c, preprocess_s / len(items), stop_after=stop_after)
            for g, (q, c) in zip(generations, items, strict=True)
        ]

    @staticmethod
    def check_stop_after(stop_after: str) -> None:
        """Raise InvalidQuestion unless `stop_after` is one of STOP_AFTER."""
        problem = stop_after_problem(stop_after)
        if problem is not None:
            raise InvalidQuestion(problem)

    def _deadline(self, should_stop: StopCallback | None) -> CallDeadline:
        who = self.backend.describe().get("base_url") or "the model"
        return CallDeadline(self.config.timeout_s, should_stop, who)

    def _generation_slot(self):
        return self._lock if self._lock is not None else contextlib.nullcontext()

    def _require_loaded(self) -> None:
        if not self.backend.loaded:
            raise EngineError("the model is not loaded: call load() first")

    @staticmethod
    def _guarded(call: Callable):
        try:
            return call()
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed inference must not escape untyped
            raise EngineError(f"inference failed: {type(exc).__name__}: {exc}") from exc


def make_backend(config: EngineConfig) -> GenerationBackend:
    """The backend `config.backend` names (imported only when used: torch, openai)."""
    if config.backend == "openai":
        return OpenAIBackend.from_config(config)
    return TransformersBackend(config)
