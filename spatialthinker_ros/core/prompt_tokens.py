"""Token ids of chat-templated prompts, with the parts that never change tokenized once.

A prompt about a frame is: the chat template's head (system turn, then the vision block with
one `<|image_pad|>` per image token), the fixed text (instruction and `Image size` line: one per
model size and prompt style), the question, and the template's tail. Only the question changes
between requests, so the head + fixed text is tokenized once per (fixed text, image tokens) and
only the question is tokenized per request.

Pieces join where tokenization cannot merge across: the head ends with a special token, the
fixed text with a newline before the stripped question, the tail starts with a special token.
Still, nothing is assumed: the first prompt of every new key goes through the processor (the
model card's path) and the cached ids are compared with the processor's; any difference turns
the cache off for good (`enabled`, `problem`) and every prompt takes the processor's path.
"""

from __future__ import annotations

from dataclasses import dataclass

SENTINEL = "\x00spatialthinker-prompt\x00"


@dataclass(frozen=True)
class _Fixed:
    ids: tuple[int, ...]  # head (image tokens expanded) + fixed text
    mm_types: tuple[int, ...] | None  # the processor's mm_token_type_ids for them, if it gives any


def template_pieces(processor) -> tuple[str, str] | None:
    """The chat text before and after the user's prompt text (image first, like the card), or
    None when the template does not render the prompt verbatim exactly once."""
    content = [{"type": "image"}, {"type": "text", "text": SENTINEL}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(SENTINEL) != 1:
        return None
    head, tail = text.split(SENTINEL)
    return head, tail


class PromptTokens:
    """Cached token ids of prompts; see the module doc."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self._fixed: dict[tuple[str, int], _Fixed] = {}
        self._text_keys: tuple[str, ...] = ()  # the processor's text outputs (ids, mask, types)
        self.problem = ""
        pieces = template_pieces(processor)
        if pieces is None or pieces[0].count(self.image_token) != 1:
            self.problem = "the chat template does not render one image and the prompt verbatim"
            pieces = ("", "")
        self._head, self._tail = pieces
        self._tail_ids = tuple(self._tokenize(self._tail))

    @property
    def enabled(self) -> bool:
        return not self.problem

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def lookup(self, prompt: str, fixed: str, image_tokens: int) -> dict[str, list[int]] | None:
        """The text inputs (input_ids, attention_mask, mm_token_type_ids when the processor
        gives them) of `prompt`, whose first characters are `fixed`, as lists; None when the
        cache cannot serve it (new key: call `learn` with the processor's inputs)."""
        entry = self._fixed.get((fixed, image_tokens)) if self.enabled else None
        if entry is None or not prompt.startswith(fixed):
            return None
        question = self._tokenize(prompt[len(fixed) :])
        ids = list(entry.ids) + question + list(self._tail_ids)
        inputs = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if entry.mm_types is not None:
            inputs["mm_token_type_ids"] = list(entry.mm_types) + [0] * (len(ids) - len(entry.ids))
        return {k: v for k, v in inputs.items() if k in self._text_keys}

    def learn(self, prompt: str, fixed: str, image_tokens: int, reference) -> None:
        """Cache the fixed part of `prompt` from the processor's own inputs for it
        (`reference`: input_ids etc. of one prompt, batch of 1), after checking that the cached
        pieces give exactly those inputs; a difference turns the cache off."""
        if not self.enabled or not prompt.startswith(fixed):
            return
        head = self._head.replace(self.image_token, self.image_token * image_tokens)
        fixed_ids = self.tokenizer(head + fixed)["input_ids"]
        want = {k: [int(x) for x in reference[k][0]] for k in reference
                if k not in ("pixel_values", "image_grid_thw")}  # fmt: skip
        mm_types = want.get("mm_token_type_ids")
        entry = _Fixed(tuple(fixed_ids), tuple(mm_types[: len(fixed_ids)]) if mm_types else None)
        self._text_keys = tuple(want)
        self._fixed[(fixed, image_tokens)] = entry
        got = self.lookup(prompt, fixed, image_tokens)
        if got != want:
            self._fixed.clear()
            differing = sorted(k for k in set(want) | set(got or {})
                               if (got or {}).get(k) != want.get(k))  # fmt: skip
            self.problem = ("cached prompt tokens differ from the processor's "
                            f"({', '.join(differing)}): the prompt token cache is off")
