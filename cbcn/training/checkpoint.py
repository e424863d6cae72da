"""Training checkpoints: atomic writes, a format version, and clear errors.

Why atomic: a run killed while writing must leave the previous checkpoint intact, so the file is
written under a temporary name in the same folder, flushed to disk, then moved into place with
``os.replace`` (atomic on POSIX and Windows). Why a version and a config fingerprint: resuming
with another model, data set or recipe would silently train something else; such mismatches are
refused with the differing fields named. Checkpoints hold only plain data and tensors, so they
load with ``torch.load(weights_only=True)`` (no arbitrary code from a pickle).
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbcn.fileio import atomic_write_bytes

FORMAT = "cbcn-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of another format/version, or from another run."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plain data + tensors) atomically, stamped with format and versions."""
    from cbcn import __version__
    payload = dict(state)
    payload.update(format=FORMAT, format_version=FORMAT_VERSION, cbcn_version=__version__,
                   torch_version=str(torch.__version__))
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    what: str = "checkpoint") -> Any:
    """``torch.load`` of plain data (``weights_only``) with one clear error for a missing, corrupt,
    truncated or foreign file (torch raises several exception types, some advising unsafe loads)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        if "Unsupported global:" in text:  # a torch file with Python objects cbcn never writes
            found = text.split("Unsupported global:", 1)[-1].split(" was not", 1)[0].strip()
            raise CheckpointError(f"{path} is not a valid cbcn {what}: it is a torch file holding Python objects "
                                  f"cbcn never writes ({found})") from None
        # torch's own words, without its advice (allow-listing globals, filing issues)
        if "WeightsUnpickler error:" in text:
            reason = "unpickling: " + text.split("WeightsUnpickler error:", 1)[1].strip().split(" Check the")[0]
        else:
            reason = text.split(". ")[0]
        reason = reason[:160]
        raise CheckpointError(f"{path} is not a valid cbcn {what}: the file is truncated or corrupt, or not a torch "
                              f"file ({type(e).__name__}: {reason})") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`."""
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cbcn training checkpoint (no '{FORMAT}' format tag)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this cbcn "
                              f"({state.get('cbcn_version', '?')} wrote it) reads version {FORMAT_VERSION}")
    return state


def config_mismatches(saved: dict[str, Any], current: dict[str, Any], keys) -> list[str]:
    """``'key: saved -> current'`` for every identity key that differs (JSON-normalised)."""
    norm = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731  tuples == lists
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in keys if norm(saved.get(k)) != norm(current.get(k))]


def model_signature(state_dict: dict[str, torch.Tensor]) -> list[list]:
    """Parameter/buffer names and shapes: detects a checkpoint of a different architecture."""
    return [[k, list(v.shape)] for k, v in state_dict.items()]


# --- RNG state, as plain data -----------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states, in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu() if state["torch"].device.type != "cpu" else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
