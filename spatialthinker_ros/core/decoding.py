"""How the in-process backend decodes: when the compiled decode loop (`decode_loop`) is on, the
length of its static cache; for `generate` (compile off, prompt lookup, several questions) the
hooks that stream it, stop it, or end it early.

Paths (all greedy; the tests check each gives the tokens of plain eager `generate`):
- eager `generate`: a dynamic KV cache, one forward pass per generated token (the card's way);
- the decode loop (`EngineConfig.compile`): our own loop, a static KV cache allocated once and
  a compiled one-token step fed its own output, ids checked on the host per chunk
  (`decode_loop`); single answers only;
- prompt lookup (`EngineConfig.prompt_lookup`, through `generate`, also when compile is on):
  up to N draft tokens copied from where the last tokens already occur in the prompt or the
  text so far (transformers' `prompt_lookup_num_tokens`), verified in one forward pass and kept
  only where greedy decoding agrees. Fewer forward passes per token, same tokens (up to the
  rounding of a k-token pass against k one-token passes, which bf16 kernels can turn at a
  near-tie).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import StopCallback, TextCallback, TextEnd

# Question tokens the static cache leaves room for beyond the fixed prompt (about 1000
# characters of English); a longer prompt decodes through generate instead.
QUESTION_TOKEN_ALLOWANCE = 256
CACHE_ROUNDING = 128


def compile_enabled(setting: str, device: str) -> bool:
    """`EngineConfig.compile` resolved: auto is on for CUDA and off elsewhere (compiling for the
    CPU takes ~30 s and gains little there)."""
    if setting == "auto":
        return device.startswith("cuda")
    return setting == "on"


def static_cache_length(longest_prompt: int, max_new_tokens: int) -> int:
    """Tokens the decode loop's static cache holds: the longest expected prompt plus
    max_new_tokens, rounded up (one size for every request: another would mean another
    compile)."""
    need = longest_prompt + max_new_tokens
    return -(-need // CACHE_ROUNDING) * CACHE_ROUNDING


class TextWatch:
    """Feeds generated tokens, once each and in order, to an `end_when` predicate and remembers
    after how many generated tokens it returned True (`stop_at`). The stopping criterion feeds
    it every step and the streamer as tokens arrive (passing on none past `stop_at`), whichever
    sees a token first. Each token is decoded on its own: cheap, and exact for the ASCII tags
    and quotes the scene-graph rule looks at."""

    def __init__(self, tokenizer, end_when: TextEnd, start: int):
        self.tokenizer = tokenizer
        self.end_when = end_when
        self.start = start  # length of the prompt in the sequences generate hands the criteria
        self.fed = 0
        self.stop_at: int | None = None

    def feed(self, tokens: Sequence[int], offset: int) -> None:
        """`tokens[i]` is generated token number `offset + i` (offset <= tokens already fed)."""
        while self.stop_at is None and self.fed < offset + len(tokens):
            token = int(tokens[self.fed - offset])
            self.fed += 1
            if self.end_when(self.tokenizer.decode([token], skip_special_tokens=True)):
                self.stop_at = self.fed

    def trim(self, generated: Sequence[int]) -> Sequence[int]:
        """The generated ids up to and including the one that ended the text (a prompt-lookup
        step may accept a few tokens past it)."""
        return generated if self.stop_at is None else generated[: self.stop_at]


def stopping_criteria(should_stop: StopCallback | None, watches: Sequence[TextWatch]):
    """transformers StoppingCriteriaList: `should_stop` (cancel, timeout) ends every row; a
    watch ends its row once its text is complete. None when there is nothing to check."""
    if should_stop is None and not watches:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _ShouldStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = bool(should_stop())
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,
                              device=input_ids.device)  # fmt: skip

    class _TextComplete(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            active = [w for w in watches if w.stop_at is None]
            if active:
                first = min(w.start + w.fed for w in active)
                tail = input_ids[:, first:].tolist()  # one small copy per step
                for row, watch in zip(tail, watches, strict=True):
                    if watch.stop_at is None:
                        skip = watch.start + watch.fed - first
                        watch.feed(row[skip:], watch.fed)
            done = [w.stop_at is not None for w in watches]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    criteria = []
    if should_stop is not None:
        criteria.append(_ShouldStop())
    if watches:
        criteria.append(_TextComplete())
    return StoppingCriteriaList(criteria)


def callback_streamer(tokenizer, on_text: TextCallback, watch: TextWatch | None = None):
    """transformers' TextStreamer delivering text to `on_text`; with a watch, no token past the
    one that completed the watched text."""
    import torch
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):
        streamed = 0  # generated tokens received so far

        def put(self, value) -> None:
            if watch is None or self.next_tokens_are_prompt:
                super().put(value)
                return
            tokens = value.reshape(-1).tolist()
            watch.feed(tokens, self.streamed)
            allowed = len(tokens)
            if watch.stop_at is not None:
                allowed = max(0, min(allowed, watch.stop_at - self.streamed))
            self.streamed += len(tokens)
            if allowed:
                super().put(torch.tensor(tokens[:allowed]))

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
