"""In-process backend: Qwen2.5-VL through transformers' `from_pretrained` + greedy `generate`."""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path

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
from .geometry import fit_to_pixel_budget


def validate_model_reference(model: str) -> str:
    """A hub id `org/name` or an existing local directory; never anything executable."""
    model = model.strip()
    if not model:
        raise ModelLoadError("model must name a hub id (org/name) or a local directory")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {model!r} is not a directory")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {model!r} has no config.json")
        return str(path)
    if model.startswith(("/", ".", "~")) or ".." in model or model.count("/") != 1:
        raise ModelLoadError(
            f"model directory {model!r} does not exist (and it is not a hub id like org/name)"
        )
    return model


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

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        if self.loaded:
            return
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        source = validate_model_reference(self.config.model)
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.attention = resolve_attention(self.config.attn_implementation, self.device)
        try:
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
        except (OSError, ValueError) as exc:
            self.processor = None
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = (
                " (HF_HUB_OFFLINE is set and the model is not in the local cache: download it "
                "where there is network, or pass a local directory)"
                if offline and not Path(source).exists()
                else ""
            )
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise ModelLoadError(f"could not load model {source!r}{hint}: {first_line}") from exc
        self.model = model.to(self.device).eval()

    def unload(self) -> None:
        was_cuda = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        gc.collect()
        if was_cuda:
            import torch

            torch.cuda.empty_cache()

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "model": self.config.model,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": self.attention,
        }

    def encode(self, image: Image.Image, prompt: str):
        """Chat template + processor, exactly as the model card's snippet does it."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}],
            }
        ]
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(text=[text], images=[image], return_tensors="pt")
        self._check_fed_size(image, inputs["image_grid_thw"][0])
        return inputs.to(self.model.device)

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

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> Generation:
        import torch

        t0 = time.perf_counter()
        inputs = self.encode(image, prompt)
        preprocess_s = time.perf_counter() - t0
        stop = _StopFlag(should_stop)
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if should_stop is not None:
            kwargs["stopping_criteria"] = _stopping_criteria(stop)
        if on_text is not None:
            kwargs["streamer"] = _callback_streamer(self.processor.tokenizer, on_text)
        t1 = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        generate_s = time.perf_counter() - t1
        if stop.fired:
            raise GenerationStopped("generation stopped before it finished")
        n_prompt = inputs["input_ids"].shape[1]
        new_tokens = output[0, n_prompt:]
        text = self.processor.decode(new_tokens, skip_special_tokens=True)
        return Generation(
            text,
            n_prompt,
            int(new_tokens.shape[0]),
            preprocess_s,
            generate_s,
            tuple(new_tokens.tolist()),
        )

    def generate_many(
        self, image: Image.Image, prompts: Sequence[str], *, max_new_tokens: int
    ) -> list[Generation]:
        """One prefill of the image and the shared prompt tokens, then one greedy continuation
        per prompt from a copy of that KV cache (`prefix_cache`): the tokens `generate` gives
        per prompt (tested on the CPU). With `EngineConfig.batch_questions`, the prompts
        decode as one batch instead (faster on a GPU). A single prompt, or prompts sharing no
        prefix that holds the image, go through `generate` one by one."""
        from . import prefix_cache

        if len(prompts) < 2:
            return [self.generate(image, p, max_new_tokens=max_new_tokens) for p in prompts]
        outputs = prefix_cache.generate_many(
            self.model,
            self.processor,
            image,
            prompts,
            batched=self.config.batch_questions,
            max_new_tokens=max_new_tokens,
        )
        if outputs is None:
            return [self.generate(image, p, max_new_tokens=max_new_tokens) for p in prompts]
        return [
            Generation(
                self.processor.decode(list(o.token_ids), skip_special_tokens=True),
                o.prompt_tokens,
                len(o.token_ids),
                o.preprocess_s,
                o.generate_s,
                o.token_ids,
            )
            for o in outputs
        ]


class _StopFlag:
    def __init__(self, should_stop: StopCallback | None):
        self.should_stop = should_stop
        self.fired = False

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.fired = True
        return self.fired


def _stopping_criteria(stop: _StopFlag):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full(
                (input_ids.shape[0],), stop(), dtype=torch.bool, device=input_ids.device
            )

    return StoppingCriteriaList([_Stop()])


def _callback_streamer(tokenizer, on_text: TextCallback):
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):
        """transformers' TextStreamer, delivering text to a callback instead of stdout."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
