"""``memoize``: ``functools.cache`` for functions that ``torch.compile`` may meet in a forward.

Dynamo ignores an ``lru_cache`` wrapper and traces the wrapped function itself — which for the
1-bit backends means building and loading the CPU engine, reading files, probing the batch-norm —
and fails a ``fullgraph`` compile on it. A lookup in a plain dict it traces (and guards on), so a
result computed once in eager mode is a constant of the compiled graph.
"""
from __future__ import annotations

import functools


def memoize(fn):
    """``fn`` with its results kept per argument tuple (hashable arguments); ``cache_clear()``
    forgets them, as for ``functools.cache``."""
    results: dict = {}

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        key = args + tuple(sorted(kwargs.items())) if kwargs else args
        if key in results:
            return results[key]
        value = fn(*args, **kwargs)
        results[key] = value
        return value

    cached.cache_clear = results.clear
    return cached
