"""Bounded, ordered concurrency: `fn` over a stream of items with at most N calls in flight.

A remote server (vLLM, SGLang) batches the requests it has in flight, so a client that keeps N
of them open goes up to N times faster; the caller still wants the results in input order (a
results file, an output bag). `ordered_map` gives both. Items are pulled from the input lazily
(at most N ahead of the result being consumed), so a large benchmark or bag is never read
whole. No ROS, no engine: eval and bag replay share it.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    concurrency: int,
    *,
    stop: threading.Event | None = None,
) -> Iterator[R]:
    """Yield `fn(item)` for each item, in input order, with at most `concurrency` calls running.

    `concurrency == 1` calls `fn` in the caller's thread (exactly a plain loop). Otherwise calls
    run on worker threads; the next item is submitted as soon as the oldest result is taken, so
    N stay in flight while the caller handles each result. An exception from `fn` is raised
    here, at its item's place in the order. When the iteration ends early (that exception,
    Ctrl-C, `close()` of the generator), calls not yet started are dropped, `stop` is set so
    that running calls can give up (pass `stop.is_set` as their stop callback), and the
    running calls are waited for: no thread outlives the generator.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if concurrency == 1:
        for item in items:
            yield fn(item)
        return
    iterator = iter(items)
    pending: deque[concurrent.futures.Future[R]] = deque()
    pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="ordered_map")
    finished = False
    try:
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) == concurrency:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:  # refill before yielding: N in flight while the caller works
                pending.append(pool.submit(fn, item))
                break
            yield result
        finished = True
    finally:
        if not finished and stop is not None:
            stop.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
