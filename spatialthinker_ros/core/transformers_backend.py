"""In-process backend: Qwen2.5-VL through transformers' `from_pretrained` + greedy `generate`.

Greedy single answers with compile on run our own decode loop (`decode_loop`); prompt lookup,
compile off and several questions run `generate` (options and stop hooks in `decoding`); the
prompt token cache is in `prompt_tokens`. On CUDA the image processor resizes and
normalises on the model's device.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from . import decode_loop, decoding
from .files import input_file_problem
from .geometry import fit_to_pixel_budget
from .options import EngineConfig, model_reference_problem
from .prompt import build_prompt, prompt_prefix
from .prompt_tokens import PromptTokens
from .quantization import quantize_language_model
from .text import first_useful_line
from .types import (
    EngineError,
    Generation,
    GenerationStopped,
    ModelLoadError,
    StopCallback,
    TextCallback,
    TextEnd,
    TextEndFactory,
)

log = logging.getLogger(__name__)
def validate_model_reference(model: str) -> str:
    """The reference to load: an existing local directory or a hub id `org/name`; raises
    ModelLoadError (the rule is `options.model_reference_problem`)."""
    problem = model_reference_problem(model)
    if problem is not None:
        raise ModelLoadError(problem)
    model = model.strip()
    path = Path(model).expanduser()
    return str(path) if path.exists() else model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def resolve_attention(attn: str, device: str) -> str:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if attn == "auto":
        return "flash_attention_2" if has_flash and device.startswith("cuda") else "sdpa"
    if attn == "flash_attention_2" and not has_flash:
        raise ModelLoadError("attn_implementation flash_attention_2 needs the flash-attn package")
    return attn


def _check_model_files(source: str) -> None:
    """Every entry of a local model folder is a regular file or a folder (OSError if not)."""
    folder = Path(source)
    if folder.is_dir():
        for entry in folder.iterdir():
            problem = None if entry.is_dir() else input_file_problem(entry)
            if problem is not None:
                raise OSError(problem)


class TransformersBackend:
    name = "transformers"
    resizes_to_model_size = True  # the processor's smart_resize == geometry.fit_to_pixel_budget
    concurrent_requests = False  # one model, one generation at a time

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model = None
        self.processor = None
        self.device = ""
        self.dtype = None
        self.attention = ""
        self.tokens: PromptTokens | None = None
        self.loop: decode_loop.DecodeLoop | None = None  # the compiled decode loop, when on
        self.compile_note = ""  # why compile is off although asked for, or its warm-up time
        self.warmup_s = 0.0
        self.last_decode = ""  # the path the last answer took (describe(), diagnostics)
        self.quantization = "none"  # what quantize_language_model did

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Load the model and processor; with compile on, build the decode loop's static cache
        and compile its step on a dummy frame (so no request ever pays for it)."""
        if self.loaded:
            return
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        source = validate_model_reference(self.config.model)
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.attention = resolve_attention(self.config.attn_implementation, self.device)
        try:
            _check_model_files(source)  # a FIFO or device would block the loaders or never end
            # Same pixel budget as the engine's resize, so the processor leaves the image as is.
            self.processor = AutoProcessor.from_pretrained(
                source,
                size={
                    "shortest_edge": self.config.min_pixels,
                    "longest_edge": self.config.max_pixels,
                },
            )
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                source, dtype=self.dtype, attn_implementation=self.attention
            )
            self.quantization = quantize_language_model(model, self.config.quantization,
                                                        self.device)  # fmt: skip
            tokens = PromptTokens(self.processor)  # renders the chat template once
        except ModelLoadError:
            self.processor = None
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged folder fails in any way: one line
            self.processor = None
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = (
                " (HF_HUB_OFFLINE is set and the model is not in the local cache: download it "
                "where there is network, or pass a local directory)"
                if offline and not Path(source).exists()
                else ""
            )
            raise ModelLoadError(f"could not load model {source!r}{hint}: "
                                 f"{first_useful_line(exc)}") from exc  # fmt: skip
        self.model = model.to(self.device).eval()
        self.tokens = tokens
        if decoding.compile_enabled(self.config.compile, self.device):
            if self.config.prompt_lookup > 0:  # the loop would never run
                self.compile_note = "off (prompt lookup decodes through generate)"
            else:
                self._compile()

    def _compile(self) -> None:
        """The decode loop: static cache + compiled step, warmed up on a dummy frame. A failure
        is a load error when compile is "on"; with "auto" the backend decodes eagerly and says
        why."""
        longest = self._longest_prompt_tokens()
        length = decoding.static_cache_length(longest, self.config.max_new_tokens)
        t0 = time.perf_counter()
        try:
            self.loop = decode_loop.DecodeLoop(self.model, length, self.device)
            self._warm_up()
        except Exception as exc:  # noqa: BLE001 - torch.compile fails in many ways
            self.loop = None
            reason = type(exc).__name__ + (f": {str(exc).strip().splitlines()[0]}"
                                           if str(exc).strip() else "")  # fmt: skip
            if self.config.compile == "on":
                self.unload()
                raise ModelLoadError(f"compiling the decode step failed: {reason}") from exc
            self.compile_note = f"off (compiling failed: {reason})"
            log.warning("compile: %s; decoding eagerly", self.compile_note)
            return
        self.warmup_s = time.perf_counter() - t0
        self.compile_note = (f"on (decode loop, static cache of {length} tokens, "
                             f"{self.loop.chunk}-token chunks, warm-up {self.warmup_s:.1f} s)")
        log.info("compile: %s", self.compile_note)

    def _longest_prompt_tokens(self) -> int:
        """Tokens of the longest prompt expected: the most image tokens the pixel budget allows,
        the chat template and fixed text, and QUESTION_TOKEN_ALLOWANCE for the question."""
        import math

        side = math.isqrt(self.config.max_pixels)
        width, height = fit_to_pixel_budget(side, side, self.config.min_pixels,
                                            self.config.max_pixels)  # fmt: skip
        image_tokens = self.config.max_pixels // self._token_pixels() ** 2
        text = build_prompt("?", width, height, style=self.config.prompt_style)
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": text}]}]  # fmt: skip
        chat = self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)  # fmt: skip
        text_tokens = len(self.processor.tokenizer(chat)["input_ids"])
        return image_tokens + text_tokens + decoding.QUESTION_TOKEN_ALLOWANCE

    def _warm_up(self) -> None:
        """Compile (and record the CUDA graphs of) the decode step on a grey frame. The step's
        shapes do not depend on the prompt (one token, a cache of fixed length), so this one
        graph serves every prompt length and frame size."""
        import torch

        frame = Image.new("RGB", (224, 224), (128, 128, 128))
        prompt = build_prompt("Where is the object?", *frame.size, style=self.config.prompt_style)
        with torch.inference_mode():
            decode_loop.warm_up(self.loop, self.encode(frame, prompt))

    def unload(self) -> None:
        was_cuda = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        self.tokens = None
        self.loop = None
        gc.collect()
        if was_cuda:
            import torch

            torch.cuda.empty_cache()

    def memory_stats(self) -> dict[str, float]:
        """CUDA memory allocated and reserved by this process (MB); empty off CUDA."""
        if not self.device.startswith("cuda"):
            return {}
        import torch

        return {
            "gpu_memory_allocated_mb": torch.cuda.memory_allocated() / 2**20,
            "gpu_memory_reserved_mb": torch.cuda.memory_reserved() / 2**20,
        }

    def release_memory(self) -> None:
        """Return the CUDA caching allocator's free blocks (after an out-of-memory error)."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def describe(self) -> dict[str, str]:
        lookup = self.config.prompt_lookup
        lookup_text = f"{lookup} draft tokens (through generate)" if lookup else "off"
        return {
            "backend": self.name,
            "model": self.config.model,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "quantization": self.quantization,
            "attention": self.attention,
            "compile": self.compile_note or "off",
            "prompt_lookup": lookup_text,
            "last_decode": self.last_decode or "none yet",
            "prompt_token_cache": "on" if self.tokens is None or self.tokens.enabled
            else self.tokens.problem,
        }

    # ------------------------------------------------------------------ inputs

    def _preprocess_device_kwargs(self) -> dict:
        """With `gpu_preprocess` on CUDA the image processor resizes and normalises on the
        model's GPU (no CPU work, no float pixel transfer); otherwise it runs as the card's does
        (bench/gpu.py: the GPU's pixels differ from the CPU's by up to 0.3 after normalising,
        which changed greedy tokens from the first one)."""
        on_gpu = self.config.gpu_preprocess and self.device.startswith("cuda")
        return {"device": self.device} if on_gpu else {}

    def encode(self, image: Image.Image, prompt: str):
        """The model inputs for (image, prompt) on the model's device: the same tensors the
        model card's `processor(text=chat_template(...), images=...)` gives (checked: see
        `prompt_tokens`), with the prompt's fixed part tokenized once per frame size."""
        from transformers import BatchFeature

        stated = fit_to_pixel_budget(*image.size, self.config.min_pixels, self.config.max_pixels)
        side = self._token_pixels()
        image_tokens = (stated[0] // side) * (stated[1] // side)
        fixed = prompt_prefix(*stated, self.config.prompt_style)
        text_inputs = self.tokens.lookup(prompt, fixed, image_tokens) if self.tokens else None
        device_kwargs = self._preprocess_device_kwargs()
        if text_inputs is None:
            inputs = self.processor(
                text=[self._chat_text(image, prompt)], images=[image], return_tensors="pt",
                **device_kwargs,
            )
            if self.tokens is not None:
                self.tokens.learn(prompt, fixed, image_tokens, inputs)
        else:
            import torch

            vision = self.processor.image_processor(images=[image], return_tensors="pt",
                                                    **device_kwargs)  # fmt: skip
            text = {k: torch.tensor([v]) for k, v in text_inputs.items()}
            inputs = BatchFeature({**text, **vision})
        self._check_fed_size(image, inputs["image_grid_thw"][0])
        return inputs.to(self.model.device)

    def _token_pixels(self) -> int:
        """Side in pixels of the square one image token covers (patch 14 x merge 2 = 28)."""
        vision = self.model.config.vision_config
        return vision.patch_size * vision.spatial_merge_size

    def _chat_text(self, image: Image.Image, prompt: str) -> str:
        """Chat template, exactly as the model card's snippet applies it."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}],
            }
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _check_fed_size(self, image: Image.Image, grid_thw) -> None:
        """The prompt states fit_to_pixel_budget's size: the processor must feed exactly that."""
        patch = self.model.config.vision_config.patch_size
        fed = (int(grid_thw[2]) * patch, int(grid_thw[1]) * patch)
        stated = fit_to_pixel_budget(*image.size, self.config.min_pixels, self.config.max_pixels)
        if fed != stated:
            raise EngineError(
                f"the processor fed {fed[0]} x {fed[1]} but the prompt states "
                f"{stated[0]} x {stated[1]}: its pixel limits differ from the engine's"
            )

    # ------------------------------------------------------------------ generation

    def _loop_problem(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why this answer cannot take the decode loop (None: it can)."""
        if self.loop is None:
            return "compile off" if not self.compile_note else self.compile_note
        if self.config.prompt_lookup > 0:
            return f"prompt lookup {self.config.prompt_lookup}"
        if not self.loop.fits(prompt_tokens, max_new_tokens):
            return f"prompt of {prompt_tokens} tokens longer than the static cache allows"
        return decode_loop.generation_config_problem(self.model.generation_config)

    def _generate_ids(self, inputs, **kwargs) -> list[int]:
        """Greedy `generate` (with prompt lookup when asked for); the generated ids."""
        import torch

        if self.config.prompt_lookup > 0:
            kwargs["prompt_lookup_num_tokens"] = self.config.prompt_lookup
        n_prompt = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            output = self.model.generate(**inputs, do_sample=False, **kwargs)
        return output[0, n_prompt:].tolist()

    def _loop_ids(self, inputs, max_new_tokens: int, watch: decoding.TextWatch | None,
                  stop: StopCallback | None, streamer) -> list[int]:  # fmt: skip
        """The decode loop's ids; each chunk goes to the watch, the streamer and `stop`."""
        import torch

        fed = 0

        def check(new: Sequence[int]) -> bool:
            nonlocal fed
            if watch is not None:
                watch.feed(new, fed)
            fed += len(new)
            if streamer is not None:
                streamer.put(torch.tensor(new))  # passes on none past the watch's stop
            if watch is not None and watch.stop_at is not None:
                return True
            return stop is not None and stop()

        if streamer is not None:
            streamer.next_tokens_are_prompt = False  # it gets generated ids only
        with torch.inference_mode():
            ids = self.loop.run(inputs, max_new_tokens=max_new_tokens,
                                eos=decode_loop.end_tokens(self.model.generation_config),
                                check=check)  # fmt: skip
        if streamer is not None:
            streamer.end()
        return ids

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
        t0 = time.perf_counter()
        inputs = self.encode(image, prompt)
        preprocess_s = time.perf_counter() - t0
        n_prompt = inputs["input_ids"].shape[1]
        tokenizer = self.processor.tokenizer
        watch = decoding.TextWatch(tokenizer, end_when, n_prompt) if end_when else None
        stop = _StopFlag(should_stop)
        streamer = (decoding.callback_streamer(tokenizer, on_text, watch)
                    if on_text is not None else None)  # fmt: skip
        t1 = time.perf_counter()
        problem = self._loop_problem(n_prompt, max_new_tokens)
        if problem is None:
            self.last_decode = "decode loop (compiled)"
            ids = self._loop_ids(inputs, max_new_tokens, watch,
                                 stop if should_stop is not None else None, streamer)  # fmt: skip
        else:
            self.last_decode = f"generate ({problem})"
            kwargs: dict = {"max_new_tokens": max_new_tokens}
            criteria = decoding.stopping_criteria(
                stop if should_stop is not None else None, [watch] if watch else []
            )
            if criteria is not None:
                kwargs["stopping_criteria"] = criteria
            if streamer is not None:
                kwargs["streamer"] = streamer
            ids = self._generate_ids(inputs, **kwargs)
        generate_s = time.perf_counter() - t1
        if stop.fired:
            raise GenerationStopped("generation stopped before it finished")
        if watch is not None:
            ids = list(watch.trim(ids))
        text = self.processor.decode(ids, skip_special_tokens=True)
        return Generation(text, n_prompt, len(ids), preprocess_s, generate_s, tuple(ids))

    def generate_many(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        end_when: TextEndFactory | None = None,
        should_stop: StopCallback | None = None,
    ) -> list[Generation]:
        """One prefill of the image and the shared prompt tokens, then one greedy continuation
        per prompt from a copy of that KV cache (`prefix_cache`): the tokens `generate` gives
        per prompt (tested on the CPU). With `EngineConfig.batch_questions`, the prompts
        decode as one batch instead (faster on a GPU). A single prompt, or prompts sharing no
        prefix that holds the image, go through `generate` one by one. `end_when`: a fresh
        predicate per prompt, ending its generation (see `generate`). `should_stop`: polled
        at every token of every prompt (the call's one deadline)."""
        from . import prefix_cache

        def one_by_one() -> list[Generation]:
            return [self.generate(image, p, max_new_tokens=max_new_tokens,
                                  should_stop=should_stop,
                                  end_when=end_when() if end_when else None)
                    for p in prompts]  # fmt: skip

        if len(prompts) < 2:
            return one_by_one()
        tokenizer = self.processor.tokenizer
        watches: list[decoding.TextWatch] = []
        stop = _StopFlag(should_stop)

        def stopping(start: int, rows: int) -> dict:
            """Stopping criteria for one generate call of `rows` prompts of width `start`."""
            if end_when is None and should_stop is None:
                return {}
            new = ([decoding.TextWatch(tokenizer, end_when(), start) for _ in range(rows)]
                   if end_when is not None else [])  # fmt: skip
            watches.extend(new)
            return {"stopping_criteria": decoding.stopping_criteria(
                stop if should_stop is not None else None, new)}

        outputs = prefix_cache.generate_many(
            self.model,
            self.processor,
            image,
            prompts,
            batched=self.config.batch_questions,
            stopping=stopping,
            max_new_tokens=max_new_tokens,
        )
        if stop.fired:
            raise GenerationStopped("generation stopped before it finished")
        if outputs is None:
            return one_by_one()
        self.last_decode = f"generate ({len(prompts)} questions, shared image prefix)"
        generations = []
        for i, o in enumerate(outputs):
            ids = list(watches[i].trim(o.token_ids)) if watches else list(o.token_ids)
            generations.append(Generation(
                self.processor.decode(ids, skip_special_tokens=True), o.prompt_tokens, len(ids),
                o.preprocess_s, o.generate_s, tuple(ids),
            ))
        return generations


class _StopFlag:
    def __init__(self, should_stop: StopCallback | None):
        self.should_stop = should_stop
        self.fired = False

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.fired = True
        return self.fired
