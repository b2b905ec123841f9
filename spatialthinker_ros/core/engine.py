"""SpatialThinkerEngine: one image + question(s) in, parsed and box-mapped results out.

The engine owns what must be identical whatever runs the model: resizing the frame to the size
Qwen2.5-VL uses (multiples of 28 within the pixel budget), stating exactly that size in the
prompt, parsing the output and mapping its boxes back to source-image pixels. A backend only
turns (resized image, prompt text) into generated text: `TransformersBackend` in process, or the
OpenAI-compatible remote backend (`openai_backend.py`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .geometry import Size, fit_to_pixel_budget, map_scene_graph
from .parsing import parse_output
from .prompt import PROMPT_VERSION, PromptStyle, build_prompt
from .scene import Reasoning

DEFAULT_MODEL = "OX-PIXL/SpatialThinker-3B"
# Qwen2.5-VL processor's floor (4 * 28 * 28) and a ~1 MP ceiling (1280 * 28 * 28): a 640x480
# frame is fed as 644x476 (391 visual tokens); 1080p is scaled down to fit.
DEFAULT_MIN_PIXELS = 3136
DEFAULT_MAX_PIXELS = 1_003_520

ImageInput = Image.Image | np.ndarray
QuestionInput = str | tuple[str, Sequence[str]]

# Qwen chat control tokens (`<|im_start|>`, `<|image_pad|>`, ...): never accepted in a question.
CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
TextCallback = Callable[[str], None]
StopCallback = Callable[[], bool]


class EngineError(RuntimeError):
    """Any failure of the engine, with a message meant for the user."""


class ModelLoadError(EngineError):
    """The model could not be loaded (missing directory, offline without a cache, bad option)."""


class GenerationStopped(EngineError):
    """`should_stop` returned True (cancel, timeout or shutdown) before generation finished."""


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL  # hub id or local directory
    backend: str = "transformers"  # "transformers" (in process) or "openai" (remote server)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32
    attn_implementation: str = "auto"  # auto (flash_attention_2 if installed on GPU, else sdpa)
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_new_tokens: int = 1024
    prompt_style: PromptStyle = PromptStyle.CARD
    # answer_many: decode the questions as one batch (fastest; may differ from one-by-one greedy
    # output in near-ties on GPUs) instead of one after another from the shared prefix cache.
    batch_questions: bool = False
    # Remote backend ("openai"): server URL, served model name, env var holding the API key.
    base_url: str = "http://127.0.0.1:8000/v1"
    api_model: str = ""  # defaults to `model`
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 2

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EngineConfig:
        """The config from any mapping holding some of its field names (CLI arguments, node
        parameters); other keys are ignored, missing fields keep their defaults."""
        values = {f.name: options[f.name] for f in fields(cls) if f.name in options}
        if "prompt_style" in values:
            values["prompt_style"] = PromptStyle(values["prompt_style"])
        if "model" in values:
            values["model"] = str(values["model"]).strip()
        return cls(**values)

    def validate(self) -> None:
        """Raise ModelLoadError naming the first bad option."""
        problems = []
        if not self.model or not self.model.strip():
            problems.append("model must name a hub id or a local directory")
        if self.backend not in ("transformers", "openai"):
            problems.append(f"backend must be 'transformers' or 'openai', got {self.backend!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            problems.append(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.attn_implementation not in ("auto", "sdpa", "eager", "flash_attention_2"):
            problems.append(
                "attn_implementation must be auto, sdpa, eager or flash_attention_2, "
                f"got {self.attn_implementation!r}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            problems.append(
                f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s}")
        if problems:
            raise ModelLoadError("; ".join(problems))


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

    @property
    def raw(self) -> str:
        return self.reasoning.raw


class GenerationBackend(Protocol):
    name: str
    # True when the backend's own processor resizes the frame to the model size (the engine then
    # hands it the source frame); False when it needs the frame already resized.
    resizes_to_model_size: bool
    # True when generate() may be called from several threads at once (the engine then does not
    # serialise answers); absent or False: one at a time.
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
    ) -> Generation: ...

    def generate_many(
        self, image: Image.Image, prompts: Sequence[str], *, max_new_tokens: int
    ) -> list[Generation]: ...

    def describe(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # resized to model_size, RGB
    source_size: Size
    model_size: Size


def _as_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise EngineError(
                f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
            )
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    raise EngineError(f"expected a PIL image or numpy RGB array, got {type(image).__name__}")


def _normalise_question(item: QuestionInput) -> tuple[str, tuple[str, ...]]:
    if isinstance(item, str):
        return item, ()
    question, choices = item
    return question, tuple(choices)


class SpatialThinkerEngine:
    """Loads SpatialThinker (or any Qwen2.5-VL directory) and answers spatial questions."""

    def __init__(
        self, config: EngineConfig | None = None, backend: GenerationBackend | None = None
    ):
        self.config = config or EngineConfig()
        self.config.validate()
        self.backend = backend or make_backend(self.config)
        # One generation at a time, unless the backend takes concurrent requests (a server
        # batches them): the in-process model and its caches are not thread-safe.
        concurrent = getattr(self.backend, "concurrent_requests", False)
        self._lock = contextlib.nullcontext() if concurrent else threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.backend.loaded

    def load(self) -> None:
        self.backend.load()

    def unload(self) -> None:
        self.backend.unload()

    def describe(self) -> dict[str, str]:
        return self.backend.describe()

    def prepare_image(self, image: ImageInput) -> PreparedImage:
        """The size the model will see; the frame resized to it unless the backend's processor
        does that itself (the in-process one: same size, one resize instead of two)."""
        pil = _as_pil(image)
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
        if not question or not question.strip():
            raise EngineError("question is empty")
        if CONTROL_TOKEN.search(question) or any(CONTROL_TOKEN.search(c) for c in choices):
            raise EngineError("question contains model control tokens such as <|im_start|>")
        try:
            return build_prompt(
                question, *prepared.model_size, choices or None, self.config.prompt_style
            )
        except ValueError as exc:
            raise EngineError(str(exc)) from exc

    def finish(
        self,
        generation: Generation,
        prepared: PreparedImage,
        question: str,
        choices: tuple[str, ...],
        preprocess_s: float,
    ) -> Result:
        """Parse a generation and map its boxes to source pixels."""
        t0 = time.perf_counter()
        reasoning = parse_output(generation.text, choices or None)
        graph = map_scene_graph(reasoning.scene_graph, prepared.model_size, prepared.source_size)
        reasoning = replace(reasoning, scene_graph=graph)
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
        )

    def answer(
        self,
        image: ImageInput,
        question: str,
        choices: Sequence[str] | None = None,
        *,
        on_text: TextCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> Result:
        """Answer one question about one image (greedy). Raises EngineError subclasses only."""
        t0 = time.perf_counter()
        prepared = self.prepare_image(image)
        choices_t = tuple(choices or ())
        prompt = self.prompt_for(prepared, question, choices_t)
        preprocess_s = time.perf_counter() - t0
        with self._lock:
            self._require_loaded()
            generation = self._guarded(
                lambda: self.backend.generate(
                    prepared.image,
                    prompt,
                    max_new_tokens=self.config.max_new_tokens,
                    on_text=on_text,
                    should_stop=should_stop,
                )
            )
        return self.finish(generation, prepared, question, choices_t, preprocess_s)

    def answer_many(self, image: ImageInput, questions: Sequence[QuestionInput]) -> list[Result]:
        """Answer several questions about one image; the backend shares the image prefix."""
        if not questions:
            return []
        t0 = time.perf_counter()
        prepared = self.prepare_image(image)
        items = [_normalise_question(q) for q in questions]
        prompts = [self.prompt_for(prepared, q, c) for q, c in items]
        preprocess_s = time.perf_counter() - t0
        with self._lock:
            self._require_loaded()
            generations = self._guarded(
                lambda: self.backend.generate_many(
                    prepared.image, prompts, max_new_tokens=self.config.max_new_tokens
                )
            )
        return [
            self.finish(g, prepared, q, c, preprocess_s / len(items))
            for g, (q, c) in zip(generations, items, strict=True)
        ]

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
    if config.backend == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(config)
    from .transformers_backend import TransformersBackend

    return TransformersBackend(config)
