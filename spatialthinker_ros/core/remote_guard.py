"""What the remote backend accepts from a server, which it cannot trust.

- Secrets by value: the backend knows the API key it sends and the credentials in its URL, so
  `Scrubber` removes exactly those values, in every encoding a server or proxy could echo them
  in (plain, URL-encoded, JSON-escaped, HTML-escaped, hex, base64 at any alignment), from every
  text that leaves the backend: messages, the streamed model text, the HTTP libraries' logs.
- A fixed vocabulary: a server's error `type`/`code` reaches a message only when it is one of
  `ERROR_TYPES` or an HTTP status number; never its message text.
- Bounded input: every response body is read through a byte cap (`Limits`): a completion stream
  by `max_new_tokens` x a generous bytes-per-token factor and a total cap, an error or redirect
  body by a small cap; compressed bodies are refused (`Accept-Encoding: identity` is asked for),
  so the cap bounds what is decoded too. Headers are bounded by the HTTP parser (h11: 100 KB).
- Same origin: a redirect to another scheme, host or port is refused before anything is sent
  there (httpx would resend the frame and the prompt with a 307/308).
- Numbers: token counts are non-negative integers or unknown; Retry-After is a bounded delay.
"""

from __future__ import annotations

import base64
import contextvars
import email.utils
import html
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

MIN_SECRET_CHARS = 6  # shorter values would match ordinary words: not treated as secrets
REDACTED = "***"
MAX_SHOWN_CHARS = 120  # a server-chosen text shown in a message (a redirect target) is cut here

# Bounds on what is kept from one response (bytes as received; bodies are never compressed).
TEXT_BYTES_PER_TOKEN = 64  # model text kept: a token is a few bytes, the longest ~ 30
STREAM_BYTES_PER_TOKEN = 4096  # SSE bytes read: vLLM sends ~ 250 per token (JSON envelope)
STREAM_OVERHEAD_BYTES = 64 * 1024  # role chunk, usage chunk, keep-alive comments
MAX_TEXT_BYTES = 4 * 1024 * 1024
MAX_STREAM_BYTES = 32 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024  # error, redirect and any non-2xx body
MAX_TOKEN_COUNT = 2**32 - 1  # SpatialAnswer.generated_tokens is a uint32

# Error types and codes OpenAI-compatible servers send (OpenAI, vLLM, SGLang, TGI, LiteLLM,
# transformers serve). Anything else is left out of messages: a server or proxy chooses these
# fields, and one that echoes the key there must not reach a log.
ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "rate_limit_exceeded", "server_error", "api_error", "internal_error",
    "internal_server_error", "insufficient_quota", "invalid_api_key", "context_length_exceeded",
    "model_not_found", "overloaded_error", "service_unavailable", "timeout", "invalid_model",
    "unsupported_value", "invalid_value", "BadRequestError", "NotFoundError",
    "InternalServerError", "AuthenticationError", "PermissionDeniedError", "RateLimitError",
    "ServiceUnavailableError", "UnprocessableEntityError", "NotImplementedError",
    "Unauthorized", "Forbidden", "validation", "validation_error", "generation",
})


# ------------------------------------------------------------------ secrets by value


def secret_variants(secret: str) -> set[str]:
    """`secret` as a server could echo it: plain, URL-encoded, JSON- and HTML-escaped, hex, and
    base64 (standard and URL-safe) at each of the three alignments it can take inside a longer
    encoded text (`Authorization: Basic ...`, a base64-encoded request dump)."""
    if len(secret) < MIN_SECRET_CHARS:
        return set()
    raw = secret.encode("utf-8")
    variants = {
        secret, quote(secret, safe=""), quote(secret), quote_plus(secret), html.escape(secret),
        json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"), raw.hex(),
        quote(quote(secret, safe=""), safe=""),  # encoded twice (a proxy's log of a URL)
    }
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii").rstrip("=")
        # Characters that depend only on the secret's bytes: after the shifted start, before
        # the last group (which depends on what follows the secret).
        start = -(-shift * 4 // 3)
        end = (shift + len(raw)) * 4 // 3
        core = encoded[start:end]
        if len(core) >= 8:
            variants.update((core, core.replace("+", "-").replace("/", "_")))
    return {v for v in variants if len(v) >= MIN_SECRET_CHARS}


def url_secrets(url: str) -> list[str]:
    """The credentials a base URL carries: user, password, `user:password`, query values."""
    parts = urlsplit(url)
    found = [unquote(parts.username or ""), unquote(parts.password or "")]
    if parts.username is not None and parts.password is not None:
        found.append(f"{unquote(parts.username)}:{unquote(parts.password)}")
    found += [value for _, value in parse_qsl(parts.query)]
    return [s for s in found if s]


class Scrubber:
    """Replaces every variant of the given secrets with `REDACTED`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            variants |= secret_variants(secret)
        # Matched without regard to case: `%2f` for `%2F`, upper-case hex; the cost is that a
        # text equal to a secret but for case is removed too.
        self.variants = sorted({v.lower() for v in variants}, key=len, reverse=True)
        self._pattern = (re.compile("|".join(re.escape(v) for v in self.variants), re.IGNORECASE)
                         if self.variants else None)  # fmt: skip
        self._first = {v[0] for v in self.variants}

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def pending(self, text: str) -> int:
        """Length of the longest end of `text` that starts a variant (held back when
        streaming: the rest of the secret may follow in the next piece)."""
        longest = len(self.variants[0]) if self.variants else 0
        for i in range(max(0, len(text) - longest + 1), len(text)):
            if text[i].lower() in self._first:
                tail = text[i:].lower()
                if any(v.startswith(tail) for v in self.variants):
                    return len(text) - i
        return 0


class StreamScrubber:
    """`Scrubber` over text arriving in pieces: a secret split across pieces is removed too.
    At most the length of the longest variant is held back, and only while the text so far
    ends with the start of one."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self.scrubber:
            return piece
        text = self.scrubber(self._held + piece)
        keep = self.scrubber.pending(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        text, self._held = self.scrubber(self._held), ""
        return text


class ScrubLogs(logging.Filter):
    """Rewrites the records of the HTTP libraries' loggers without the secrets (and without
    any `user:password@` in a URL): their debug and info lines name URLs and bodies."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is left to logging
            return True
        clean = self.scrubber(_USERINFO.sub(r"\1", message))
        if clean != message:
            record.msg, record.args = clean, None
        return True


_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")


def install_log_filter(log_filter: logging.Filter) -> None:
    """Attach `log_filter` to the HTTP libraries' loggers (each module logs on its own)."""
    for name in list(logging.root.manager.loggerDict):
        if name.split(".", 1)[0] in LOGGERS:
            logging.getLogger(name).addFilter(log_filter)
    for name in LOGGERS:
        logging.getLogger(name).addFilter(log_filter)


def remove_log_filter(log_filter: logging.Filter) -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.split(".", 1)[0] in LOGGERS:
            logging.getLogger(name).removeFilter(log_filter)


def shown(text: str) -> str:
    """A server-chosen text fit for a one-line message: printable, cut at MAX_SHOWN_CHARS."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


# ------------------------------------------------------------------ fields of a response


def error_kind(body: Any) -> str:
    """` (type)` from an OpenAI-style error body's `type`/`code`: a name of ERROR_TYPES or an
    HTTP status number, else nothing."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    for key in ("type", "code"):
        value = error.get(key)
        if isinstance(value, str) and value in ERROR_TYPES:
            return f" ({value})"
        if isinstance(value, str) and re.fullmatch(r"[1-5][0-9][0-9]", value):
            return f" ({value})"
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return f" ({value})"
    return ""


def token_count(value: Any) -> int | None:
    """A server-reported token count: a non-negative integer up to MAX_TOKEN_COUNT, else None
    (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_TOKEN_COUNT else None


def field(obj: Any, name: str) -> Any:
    """`obj.name` or `obj[name]`: the client builds response objects without validating them,
    so a field may hold a dict, a list or a number where a model or a string belongs."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None)
        if isinstance(extra, Mapping):
            value = extra.get(name)
    return value


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The delay a 429/503 asks for (`retry-after-ms`, `retry-after` in seconds or as an
    HTTP date), or None when it names none that makes sense."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if not isinstance(value, str) or len(value) > 64:
            continue
        try:
            seconds = float(value.strip()) / scale
        except ValueError:
            seconds = _http_date_delay(value) if scale == 1.0 else None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _http_date_delay(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------ the HTTP client


class ResponseTooLarge(Exception):
    """A response body went past its cap: reading stopped there, the connection was closed."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"HTTP {status} body over {limit} bytes")
        self.status = status
        self.limit = limit


class RedirectRefused(Exception):
    """A redirect pointed off the configured origin; `target` is fit for a message."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class CompressionRefused(Exception):
    """The server compressed a body although asked not to: its decoded size has no bound."""

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


@dataclass(frozen=True)
class Limits:
    """Byte caps of one request (set per request through `LIMITS`)."""

    stream_bytes: int  # a 2xx body (the SSE stream)
    text_bytes: int  # model text kept

    @classmethod
    def for_tokens(cls, max_new_tokens: int) -> Limits:
        tokens = max(1, max_new_tokens)
        return cls(
            min(MAX_STREAM_BYTES, STREAM_OVERHEAD_BYTES + tokens * STREAM_BYTES_PER_TOKEN),
            min(MAX_TEXT_BYTES, tokens * TEXT_BYTES_PER_TOKEN),
        )


# The request being sent in this task: the response hook reads its caps (one asyncio task per
# request, so concurrent requests each see their own).
LIMITS: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("remote_limits",
                                                                       default=None)
DEFAULT_LIMITS = Limits.for_tokens(8192)  # a request sent without `LIMITS` set


def origin(url: Any) -> tuple[str, bytes, int | None]:
    """(scheme, host as sent, port) of an httpx URL, default ports filled in."""
    scheme = url.scheme.lower()
    return scheme, url.raw_host.lower(), url.port or {"http": 80, "https": 443}.get(scheme)


def display_url(url: str) -> str:
    """The URL without credentials or query (`http://user:secret@host/v1?key=...`), for messages
    and diagnostics."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:  # a port out of range
        pass
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def http_client(base_url: str, **kwargs: Any) -> Any:
    """The openai package's own async HTTP client class (httpx or httpx2, whichever this
    version uses), with redirects followed only within `base_url`'s origin and every body read
    through its cap."""
    import openai

    client_cls = openai.DefaultAsyncHttpxClient
    httpx_name = next(c.__module__ for c in client_cls.__mro__ if c.__name__ == "AsyncClient")
    httpx = sys.modules[httpx_name.split(".", 1)[0]]
    home = origin(httpx.URL(base_url))  # parsed as requests are: IDNA, IPv6, default port

    class Bounded(httpx.AsyncByteStream):
        def __init__(self, inner: Any, status: int, limit: int) -> None:
            self.inner, self.status, self.limit = inner, status, limit

        async def __aiter__(self):
            total = 0
            async for chunk in self.inner:
                total += len(chunk)
                if total > self.limit:
                    raise ResponseTooLarge(self.status, self.limit)
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def on_request(request: Any) -> None:
        if origin(request.url) != home:
            raise RedirectRefused(shown(display_url(str(request.url))))
        request.headers["Accept-Encoding"] = "identity"

    async def on_response(response: Any) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise CompressionRefused(shown(encoding))
        status = response.status_code
        limits = LIMITS.get() or DEFAULT_LIMITS
        limit = limits.stream_bytes if 200 <= status < 300 else MAX_ERROR_BODY_BYTES
        response.stream = Bounded(response.stream, status, limit)

    return client_cls(
        follow_redirects=True,
        max_redirects=3,
        event_hooks={"request": [on_request], "response": [on_response]},
        **kwargs,
    )
