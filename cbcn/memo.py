"""``memoize``: ``functools.cache`` for functions that ``torch.compile`` may meet in a forward.

Dynamo ignores an ``lru_cache`` wrapper and traces the wrapped function itself — which for the
1-bit backends means building and loading the CPU engine, reading files, probing the batch-norm —
and fails a ``fullgraph`` compile on it. A lookup in a plain dict it traces (and guards on), so a
result computed once in eager mode is a constant of the compiled graph.
"""
from __future__ import annotations

import functools
import inspect


def memoize(fn):
    """``fn`` with its results kept per argument tuple, defaults filled in (``f()`` and
    ``f(None)`` are one entry when ``None`` is the default; hashable arguments); ``cache_clear()``
    forgets them, as for ``functools.cache``."""
    results: dict = {}
    signature = inspect.signature(fn)
    defaults = tuple(p.default for p in signature.parameters.values())

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        if kwargs:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args = tuple(bound.arguments.values())
        key = args + defaults[len(args):]
        if key in results:
            return results[key]
        value = fn(*args, **kwargs)
        results[key] = value
        return value

    cached.cache_clear = results.clear
    return cached


def constant_tensor(cache: dict, key, make):
    """``make()`` — a tensor that depends only on ``key`` (a lookup table, a gather index) — made
    once per key, as a normal tensor whatever mode asks first (an inference tensor could not be
    saved for a later backward or traced by torch.export). While torch.compile or torch.export
    traces, a constant of the graph instead, and nothing is stored: a tensor stored during a trace
    would be the compiled graph's output, made in whatever mode that graph later runs."""
    import torch

    if torch.compiler.is_compiling():
        return make()
    if key not in cache:
        with torch.inference_mode(False):
            cache[key] = make()
    return cache[key]
