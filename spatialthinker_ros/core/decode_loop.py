"""Our own greedy decode loop for the in-process backend: the tokens of greedy `generate`
without its per-token host work (issue 19).

- Prefill: the model's own forward (vision tower + prompt, eager, any prompt length) into a
  StaticCache allocated once; the first token is the argmax of the last logits. The prefill
  leaves Qwen2.5-VL's `rope_deltas` on the model: a decoded token's 3-D rotary position is its
  cache position plus that offset on all three axes (what `generate` feeds: its position ids
  grow by one per step from the prompt's last, a text token at cache position + offset).
- Decode step: the language model's forward for one token on the static cache, `lm_head` and
  argmax, as one `torch.compile(fullgraph=True)` function (CUDA graphs on a GPU) that reads
  and writes only preallocated tensors of fixed address: the current token (fed its own
  output, it never leaves the device to be fed back), the id buffer, its write index, the
  cache. Shapes never depend on the prompt, so one graph serves every prompt length.
- The host launches CHUNK_TOKENS steps and queues an asynchronous copy of their ids to pinned
  memory; on a GPU it launches the next chunk before it waits for that copy, so the device
  has work while the host checks a chunk (end token, max_new_tokens, the caller's check:
  stop text, cancel, timeout, streaming). Ids past the stop point are dropped, so the answer
  is the one stopping at once would give; a stop costs the rest of its chunk in extra steps,
  plus the chunk queued ahead on a GPU. Everything runs in stream order, so a next answer's
  prefill follows any steps still queued.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence

# Tokens per host check: one device-to-host copy (one synchronisation) per chunk. Small enough
# that a stop or a streamed piece waits little (8 tokens are ~11 ms at 700 tokens/s), large
# enough that the host's per-chunk work hides behind the next chunk (bench/decode_paths.py).
CHUNK_TOKENS = 8
# Decode steps of the warm-up in load(): CUDA graph trees compile on the first call, record on
# the second and replay from the third.
WARMUP_STEPS = 6

# check(new_ids) -> True to stop after these ids (the ids are kept; the caller trims its own)
ChunkCheck = Callable[[Sequence[int]], bool]


def compile_mode(device: str) -> str:
    """torch.compile mode of the decode step: CUDA graphs on a GPU (a decode step is hundreds of
    small kernel launches), plain inductor elsewhere."""
    return "reduce-overhead" if device.startswith("cuda") else "default"


def end_tokens(generation_config) -> frozenset[int]:
    """The ids that end an answer (`generate`'s eos_token_id: one id, a list, or none)."""
    eos = generation_config.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


# generation_config fields whose logits processors greedy `generate` would apply, with their
# no-op values: the loop takes the plain argmax, so any other value sends the answer to generate.
_PROCESSOR_FIELDS = {"min_new_tokens": (None, 0), "min_length": (None, 0),
                     "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
                     "bad_words_ids": (None,), "suppress_tokens": (None,),
                     "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                     "forced_eos_token_id": (None,), "sequence_bias": (None,),
                     "encoder_repetition_penalty": (None, 1.0)}  # fmt: skip


def generation_config_problem(generation_config) -> str | None:
    """Why greedy `generate` would not be the plain argmax the loop takes (None: it is)."""
    for name, neutral in _PROCESSOR_FIELDS.items():
        value = getattr(generation_config, name, None)
        if value not in neutral:
            return f"generation_config.{name}={value!r}"
    return None


class DecodeLoop:
    """One static cache, the id buffers and the compiled step, reused by every answer (fixed
    tensor addresses keep the graph and its CUDA graphs valid). Call under inference_mode."""

    def __init__(self, model, max_cache_len: int, device: str, chunk: int = CHUNK_TOKENS,
                 compiled: bool = True):  # fmt: skip
        import torch
        from transformers import StaticCache

        self.model = model
        self.max_cache_len = max_cache_len
        self.cuda = device.startswith("cuda")
        self.cache = StaticCache(config=model.config.get_text_config(decoder=True),
                                 max_cache_len=max_cache_len)  # fmt: skip
        dev = model.device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=dev)  # the step's input
        self.delta = torch.zeros((), dtype=torch.long, device=dev)  # rope offset of the image
        self.index = torch.zeros((1,), dtype=torch.long, device=dev)  # next slot of `ids`
        self.ids = torch.zeros((max_cache_len,), dtype=torch.long, device=dev)
        self.set_chunk(chunk)
        for t in (self.token, self.delta, self.index, self.ids):
            torch._dynamo.mark_static_address(t)
        self.step = (torch.compile(self._step, fullgraph=True, mode=compile_mode(device))
                     if compiled else self._step)  # fmt: skip
        self.host_copies = 0  # device-to-host copies of ids, all answers (diagnostics)

    def set_chunk(self, chunk: int) -> None:
        """Tokens per host check (the step does not depend on it: bench/ sweeps it)."""
        import torch

        self.chunk = chunk
        # Two pinned host buffers: one being filled while the other is read.
        self.host = [torch.zeros((chunk,), dtype=torch.long, pin_memory=self.cuda)
                     for _ in range(2)]  # fmt: skip

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        return prompt_tokens + max_new_tokens <= self.max_cache_len

    def _step(self) -> None:
        """One greedy token: forward `token` at the cache's next position, argmax into `token`
        and into ids[index]."""
        cache = self.cache
        position = (cache.get_seq_length() + self.delta).view(1, 1, 1).expand(3, 1, 1)
        out = self.model.model.language_model(input_ids=self.token, position_ids=position,
                                              cache=cache, use_cache=True)  # fmt: skip
        logits = self.model.lm_head(out.last_hidden_state[:, -1, :])
        nxt = logits.argmax(dim=-1)
        self.token.copy_(nxt.view(1, 1))
        self.ids.index_copy_(0, self.index, nxt)
        self.index.add_(1)

    def prefill(self, inputs) -> None:
        """Empty the cache and run the prompt through the model: the first token into ids[0]."""
        self.cache.reset()
        self.model.model.rope_deltas = None
        out = self.model(**inputs, cache=self.cache, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1, :].argmax(dim=-1)
        self.token.copy_(first.view(1, 1))
        self.ids[:1].copy_(first)
        self.index.fill_(1)
        deltas = self.model.model.rope_deltas  # None: text only, positions = cache positions
        if deltas is None:
            self.delta.zero_()
        else:
            self.delta.copy_(deltas.reshape(()))

    def _collect(self, start: int, end: int, slot: int):
        """Queue the copy of ids[start:end] to host buffer `slot`; what to wait on (or None)."""
        import torch

        buffer = self.host[slot][: end - start]
        buffer.copy_(self.ids[start:end], non_blocking=self.cuda)
        self.host_copies += 1
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def run(self, inputs, *, max_new_tokens: int, eos: Collection[int] = (),
            check: ChunkCheck | None = None) -> list[int]:  # fmt: skip
        """Greedy ids after the prompt in `inputs`: up to max_new_tokens, through the first end
        token, or through the chunk on which `check` returned True."""
        self.prefill(inputs)
        pending: deque = deque()  # (start, end, host slot, event) of chunks being copied
        state = {"boundary": 0, "launched": 1, "slot": 0}  # chunk end, ids written, next slot

        def queue() -> None:
            start = state["boundary"]
            end = min(start + self.chunk, max_new_tokens)
            for _ in range(end - state["launched"]):
                self.step()
            slot = state["slot"]
            pending.append((start, end, slot, self._collect(start, end, slot)))
            state.update(boundary=end, launched=end, slot=slot ^ 1)

        queue()
        collected: list[int] = []
        while pending:
            # On a GPU keep one chunk queued while the host reads the last (the CPU computes
            # as it launches: there a chunk ahead would only be wasted at the end).
            if self.cuda and state["boundary"] < max_new_tokens:
                queue()
            start, end, slot, event = pending.popleft()
            if event is not None:
                event.synchronize()
            new = self.host[slot][: end - start].tolist()
            ended = next((i + 1 for i, t in enumerate(new) if t in eos), None)
            if ended is not None:
                new = new[:ended]
            collected.extend(new)
            stop = check is not None and check(new)
            if stop or ended is not None:
                return collected
            if not self.cuda and state["boundary"] < max_new_tokens:
                queue()
        return collected


def warm_up(loop: DecodeLoop, inputs) -> float:
    """Compile the step (and record its CUDA graphs) on real inputs; seconds taken."""
    t0 = time.perf_counter()
    loop.run(inputs, max_new_tokens=WARMUP_STEPS + 1)
    return time.perf_counter() - t0
