"""Several questions about one image: encode the image and the shared prompt tokens once.

Every prompt about a frame starts with the same tokens: the chat template's system turn, the
vision block (hundreds of image tokens), the instruction and the `Image size` line. We prefill
that shared prefix once (vision tower included), keep its KV cache, and for each question run
greedy `generate` on a copy of the cache: only the question's own tokens are prefilled again.

The shared prefix is the longest run of token ids common to all the tokenized prompts (never a
tokenization of the prefix text alone, whose last token can differ at the boundary), so every
cached key/value is the one an uncached run computes for the same token at the same position.
Qwen2.5-VL's 3-D rotary positions: after the vision block, text positions are the token index
plus a per-sequence offset (`rope_deltas`) fixed by the image grid. We compute that offset at the
prefix prefill and set it on the model before each continuation, where transformers' generate
adds it to the text positions of the uncached tokens. Tests compare against uncached runs.

Two ways to continue: one question after the other from a copy of the cache (the default), or
all questions in one batched generate (`batched=True`: decoding k questions costs little more
than one on a GPU). Both give the uncached run's tokens in the CPU tests. Neither is bit-exact by
construction: the default prefills a question's own tokens in a pass of its own, and a batch
rounds like a batch; kernels whose rounding depends on the shape (bf16 GPU matmuls) can turn a
near-tie of greedy decoding the other way. bench/gpu.py counts how often that happens.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class EncodedPrompts:
    """Token ids of each prompt (as the processor gives them) and the image's vision inputs."""

    input_ids: list  # one 1-D LongTensor per prompt, on the model's device
    vision_inputs: dict  # pixel_values, image_grid_thw: for the prefix prefill only
    mm_token_type_ids: object  # 1-D, of the first prompt (same for all in the shared part) or None
    shared_length: int  # tokens to prefill once; 0 when the shared part does not hold the image
    encode_s: float


@dataclass
class PrefixState:
    """The prefilled shared prefix: its KV cache and the rotary offset its image fixed."""

    cache: object  # transformers DynamicCache holding `length` tokens
    rope_deltas: object  # (1, 1) LongTensor
    length: int
    prefill_s: float


@dataclass(frozen=True)
class PrefixOutput:
    """One question's result: generated ids (without the prompt) and its share of the time."""

    token_ids: tuple[int, ...]
    prompt_tokens: int
    shared_tokens: int
    preprocess_s: float
    generate_s: float


def chat_text(processor, image: Image.Image, prompt: str) -> str:
    """The model card's messages (image, then prompt) through the chat template."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}],
        }
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest run of leading ids shared by all sequences."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def shareable_length(ids: Sequence[Sequence[int]], vision_end_id: int) -> int:
    """Tokens all prompts can share from one cache: their common prefix, leaving each prompt at
    least one token of its own (generate needs one to continue from), and only if it holds the
    whole vision block (the continuation carries no pixels). 0 means: do not share."""
    if not ids:
        return 0
    length = min(common_prefix_length(ids), min(len(s) for s in ids) - 1)
    first = list(ids[0][:length])
    if vision_end_id not in first:
        return 0
    return length


def encode_prompts(model, processor, image: Image.Image, prompts: Sequence[str]) -> EncodedPrompts:
    """Chat template + processor for the first prompt (pixels processed once); the others are
    tokenized with the same image-token expansion. The expansion is checked against the
    processor's own ids for the first prompt; where it differs (another processor version), every
    prompt goes through the full processor, like `TransformersBackend.encode`."""
    t0 = time.perf_counter()
    texts = [chat_text(processor, image, p) for p in prompts]
    first = processor(text=[texts[0]], images=[image], return_tensors="pt")
    first_ids = first["input_ids"][0]
    image_token = processor.image_token
    n_image = int((first_ids == processor.image_token_id).sum())

    def tokenize(text: str):
        expanded = text.replace(image_token, image_token * n_image)
        return processor.tokenizer(expanded, return_tensors="pt")["input_ids"][0]

    # A question that itself contains the image placeholder text takes the processor's path (and
    # its error), like answering it alone.
    single = all(t.count(image_token) == 1 for t in texts)
    if n_image > 0 and single and tokenize(texts[0]).equal(first_ids):
        ids = [first_ids] + [tokenize(t) for t in texts[1:]]
    else:
        ids = [first_ids]
        for text in texts[1:]:
            ids.append(processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0])
    device = model.device
    vision_end_id = model.config.vision_end_token_id
    types = first.get("mm_token_type_ids")
    return EncodedPrompts(
        input_ids=[i.to(device) for i in ids],
        vision_inputs={k: first[k].to(device) for k in ("pixel_values", "image_grid_thw")},
        mm_token_type_ids=types[0].to(device) if types is not None else None,
        shared_length=shareable_length([i.tolist() for i in ids], vision_end_id),
        encode_s=time.perf_counter() - t0,
    )


def prefill_prefix(model, encoded: EncodedPrompts) -> PrefixState:
    """Run the vision tower and the shared tokens once; keep the KV cache and rotary offset."""
    import torch
    from transformers import DynamicCache

    n = encoded.shared_length
    if n <= 0:
        raise ValueError("the prompts share no prefix that holds the image")
    t0 = time.perf_counter()
    input_ids = encoded.input_ids[0][:n].unsqueeze(0)
    attention_mask = torch.ones_like(input_ids)
    grid = encoded.vision_inputs["image_grid_thw"]
    rope_kwargs = {"image_grid_thw": grid, "attention_mask": attention_mask}
    if encoded.mm_token_type_ids is not None:
        rope_kwargs["mm_token_type_ids"] = encoded.mm_token_type_ids[:n].unsqueeze(0)
    accepted = inspect.signature(model.model.get_rope_index).parameters
    with torch.inference_mode():
        # The same 3-D positions (and offset) generate computes for a full prompt's prefill.
        position_ids, rope_deltas = model.model.get_rope_index(
            input_ids, **{k: v for k, v in rope_kwargs.items() if k in accepted}
        )
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=encoded.vision_inputs["pixel_values"],
            image_grid_thw=grid,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg(model): DynamicCache(config=model.config)},
        )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return PrefixState(cache, rope_deltas, n, time.perf_counter() - t0)


def cache_kwarg(model) -> str:
    """transformers 5.24 names the KV cache argument `cache` (older releases: past_key_values)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def generate_from_prefix(model, prefix: PrefixState, input_ids, **generate_kwargs):
    """Greedy generate for one full prompt whose first `prefix.length` ids are the prefix.

    Returns the generated ids (1-D, without the prompt). The prefix cache is copied, never
    changed, so it serves the next question."""
    import torch

    ids = input_ids.unsqueeze(0)
    # generate adds the model's stored offset to the text positions of uncached tokens; another
    # generate (or a previous question) may have left a different one there.
    model.model.rope_deltas = prefix.rope_deltas
    with torch.inference_mode():
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            **{cache_kwarg(model): copy.deepcopy(prefix.cache)},
            **generate_kwargs,
        )
    return output[0, ids.shape[1] :]


def generate_batched(model, prefix: PrefixState, input_ids: Sequence, **generate_kwargs) -> list:
    """All prompts in one greedy `generate` of batch k over the shared prefix cache.

    Each row is the prefix, then padding, then the prompt's own tokens (padding sits between
    them, masked out; positions come from the mask, so the question keeps its unpadded
    positions). Decoding k rows costs little more than one where decode is memory-bound (GPU).
    Not exact by construction: a batch of k may round differently from a batch of 1 on some
    kernels (bf16 GPU matmuls); the tests check equality on the CPU. Returns each row's
    generated ids up to and including its end-of-sequence token."""
    import torch

    n = prefix.length
    config = model.generation_config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    own = [ids[n:] for ids in input_ids]
    width = max(len(o) for o in own)
    rows, masks = [], []
    for ids, tokens in zip(input_ids, own, strict=True):
        gap = width - len(tokens)
        rows.append(torch.cat([ids[:n], ids.new_full((gap,), pad_id), tokens]))
        mask = torch.ones(n + width, dtype=torch.long, device=ids.device)
        mask[n : n + gap] = 0
        masks.append(mask)
    batch = torch.stack(rows)
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(len(rows))
    model.model.rope_deltas = prefix.rope_deltas
    with torch.inference_mode():
        output = model.generate(
            input_ids=batch,
            attention_mask=torch.stack(masks),
            do_sample=False,
            **{cache_kwarg(model): cache},
            **generate_kwargs,
        )
    eos = generate_kwargs.get("eos_token_id", config.eos_token_id)
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return [_until_eos(row[batch.shape[1] :].tolist(), eos_ids) for row in output]


def _until_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Finished rows of a batch are padded after their end token: cut there."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


def generate_many(
    model,
    processor,
    image: Image.Image,
    prompts: Sequence[str],
    *,
    batched: bool = False,
    stopping: Callable[[int, int], dict] | None = None,
    **generate_kwargs,
) -> list[PrefixOutput] | None:
    """Answer every prompt about `image` from one prefilled prefix, greedy. Sequential (default):
    one continuation per prompt from a copy of the cache, the tokens of one uncached `generate`
    per prompt (up to rounding, see the module doc). `batched`: all prompts decode together
    (see `generate_batched`). `stopping(width, rows)`: extra generate arguments (stopping
    criteria) for each generate call, given its input width and number of rows; called once per
    prompt in order (sequential) or once for all (batched).
    None when the prompts share no prefix holding the image: the caller then answers them one
    by one."""
    if not prompts:
        return []
    encoded = encode_prompts(model, processor, image, prompts)
    if encoded.shared_length == 0:
        return None
    prefix = prefill_prefix(model, encoded)
    k = len(prompts)

    def output(ids, new_ids: Sequence[int], generate_s: float) -> PrefixOutput:
        return PrefixOutput(
            token_ids=tuple(int(t) for t in new_ids),
            prompt_tokens=int(ids.shape[0]),
            shared_tokens=prefix.length,
            preprocess_s=encoded.encode_s / k,
            generate_s=prefix.prefill_s / k + generate_s,
        )

    def extra(width: int, rows: int) -> dict:
        return stopping(width, rows) if stopping is not None else {}

    if batched:
        t0 = time.perf_counter()
        width = prefix.length + max(len(i) - prefix.length for i in encoded.input_ids)
        rows = generate_batched(model, prefix, encoded.input_ids, **generate_kwargs,
                                **extra(width, k))  # fmt: skip
        each_s = (time.perf_counter() - t0) / k
        return [output(ids, row, each_s) for ids, row in zip(encoded.input_ids, rows, strict=True)]
    outputs = []
    for ids in encoded.input_ids:
        t0 = time.perf_counter()
        new_ids = generate_from_prefix(model, prefix, ids, **generate_kwargs,
                                       **extra(int(ids.shape[0]), 1))  # fmt: skip
        outputs.append(output(ids, new_ids.tolist(), time.perf_counter() - t0))
    return outputs
