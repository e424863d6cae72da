"""The results store: one JSON record per finished experiment run, written atomically.

Layout under ``<out>/``::

    results/<experiment_id>__<profile>__seed<seed>.json   one finished run (the record)
    status/<experiment_id>__<profile>__seed<seed>.json    why a selected run has no record yet
                                                          (skipped, unavailable, failed)

Why one file per run (as Brevitas' and many sweep tools' per-run result files): a sweep that is
killed loses at most the run in progress; shards of a cluster job write disjoint files into one
folder (or separate folders that ``merge`` combines); the report is a pandas table collected from
the files. Records are written to a temporary file in the same folder and ``os.replace``-d, so a
reader never sees half a record.

A record that cannot be read (bad JSON, missing fields, another schema version) is never
dropped silently nor overwritten: ``scan`` returns it as a ``StoreProblem`` that the sweep and
the report show; ``quarantine`` moves it aside only when the user asks (``--repair``).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cbcn.fileio import atomic_write_text

#: bump when a record's meaning changes; readers refuse other versions
SCHEMA_VERSION = 1
RECORD_KIND = "cbcn-result"
STATUS_KIND = "cbcn-status"
REQUIRED_FIELDS = ("schema_version", "kind", "experiment_id", "profile", "seed", "metrics", "experiment")
_KEY_RE = re.compile(r"^(?P<exp>[^/\\]+?)__(?P<profile>[a-z0-9_-]+)__seed(?P<seed>-?\d+)$")


class StoreError(RuntimeError):
    """A results file could not be read; the message names the file and what is wrong."""


class SchemaVersionError(StoreError):
    """A results file was written by another schema version of cbcn."""


def record_key(experiment_id: str, profile: str, seed: int) -> str:
    return f"{experiment_id}__{profile}__seed{int(seed)}"


TRAINING = "training"  # <out>/training/<key>/: each experiment's run folder (checkpoint, history, log)


def training_dir(out: Path, key: str) -> Path:
    """The run folder of the experiment record ``key`` in the store ``out``: ``<out>/training/<key>``,
    or where a store written before (``<out>/runs/<key>``, which nested as ``runs/runs/`` under the
    default ``--out runs``) already holds one, that one, so that its checkpoint resumes."""
    legacy = Path(out) / "runs" / key
    return legacy if legacy.is_dir() else Path(out) / TRAINING / key


def parse_key(key: str) -> tuple[str, str, int]:
    m = _KEY_RE.match(key)
    if not m:
        raise ValueError(f"{key!r} is not a result key '<experiment>__<profile>__seed<n>'")
    return m["exp"], m["profile"], int(m["seed"])


def atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (``cbcn.fileio``): a reader never sees half a record."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in a result record")


def read_record(path: str | os.PathLike, kind: str = RECORD_KIND) -> dict:
    """Read and validate one record; ``StoreError`` / ``SchemaVersionError`` say what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: cannot read ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated") from e
    if not isinstance(data, dict):
        raise StoreError(f"{path}: a record must be a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: results schema version {version!r}, but this cbcn reads version {SCHEMA_VERSION}. "
            f"It was written by {'an older' if isinstance(version, int) and version < SCHEMA_VERSION else 'another'} "
            f"cbcn ({data.get('versions', {}).get('cbcn', 'unknown version')}); rebuild it with this version "
            f"(`cbcn reproduce --force ...`) or read it with the cbcn that wrote it")
    if data.get("kind") != kind:
        raise StoreError(f"{path}: kind {data.get('kind')!r}, expected {kind!r}")
    required = REQUIRED_FIELDS if kind == RECORD_KIND else ("schema_version", "kind", "experiment_id", "status")
    missing = [f for f in required if f not in data]
    if missing:
        raise StoreError(f"{path}: missing fields {missing}; the record is incomplete")
    if kind == RECORD_KIND:
        expected = record_key(data["experiment_id"], data["profile"], data["seed"]) + ".json"
        if path.name != expected:
            raise StoreError(f"{path}: holds {expected[:-5]}, which does not match its file name")
    return data


@dataclass(frozen=True)
class StoreProblem:
    path: str
    error: str
    kind: str            # "corrupt" | "schema" | "quarantined"

    def __str__(self) -> str:
        return self.error


class ResultStore:
    """Finished-run records under ``<out>/results``, statuses under ``<out>/status``."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out)
        self.results_dir = self.root / "results"
        self.status_dir = self.root / "status"

    # --- paths ---
    def path(self, experiment_id: str, profile: str, seed: int) -> Path:
        return self.results_dir / f"{record_key(experiment_id, profile, seed)}.json"

    def status_path(self, experiment_id: str, profile: str, seed: int) -> Path:
        return self.status_dir / f"{record_key(experiment_id, profile, seed)}.json"

    # --- records ---
    def state(self, experiment_id: str, profile: str, seed: int) -> tuple[str, dict | StoreProblem | None]:
        """``("finished", record)``, ``("problem", StoreProblem)`` or ``("missing", None)``."""
        p = self.path(experiment_id, profile, seed)
        if not p.exists():
            return "missing", None
        try:
            return "finished", read_record(p)
        except SchemaVersionError as e:
            return "problem", StoreProblem(str(p), str(e), "schema")
        except StoreError as e:
            return "problem", StoreProblem(str(p), str(e), "corrupt")

    def write(self, record: dict) -> Path:
        """Store a finished run (replacing a readable earlier record of the same key)."""
        for f in REQUIRED_FIELDS:
            if f not in record:
                raise ValueError(f"record lacks field {f!r}")
        if record["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"record has schema version {record['schema_version']}, store writes {SCHEMA_VERSION}")
        p = self.path(record["experiment_id"], record["profile"], record["seed"])
        state, found = self.state(record["experiment_id"], record["profile"], record["seed"])
        if state == "problem":
            raise StoreError(f"refusing to overwrite unreadable record {p}: {found.error}")
        atomic_write_json(p, record)
        self.clear_status(record["experiment_id"], record["profile"], record["seed"])
        return p

    def scan(self) -> tuple[list[dict], list[StoreProblem]]:
        """All readable records and every file that is not one (stray temp files are ignored)."""
        records, problems = [], []
        if not self.results_dir.is_dir():
            return records, problems
        for p in sorted(self.results_dir.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue  # temporary files of writes in progress (or killed)
            if ".json.bad-" in p.name:
                problems.append(StoreProblem(str(p), f"{p}: an unreadable record moved aside (--repair); "
                                                     f"inspect and delete it", "quarantined"))
                continue
            if p.suffix != ".json":
                problems.append(StoreProblem(str(p), f"{p}: not a result record (expected *.json)", "corrupt"))
                continue
            try:
                records.append(read_record(p))
            except SchemaVersionError as e:
                problems.append(StoreProblem(str(p), str(e), "schema"))
            except StoreError as e:
                problems.append(StoreProblem(str(p), str(e), "corrupt"))
        return records, problems

    def quarantine(self, experiment_id: str, profile: str, seed: int) -> Path:
        """Move an unreadable record aside (``<name>.json.bad-<time>``), keeping its bytes."""
        p = self.path(experiment_id, profile, seed)
        dest = p.with_name(f"{p.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(p, dest)
        return dest

    def record_by_key(self, key: str) -> dict | None:
        """The readable record of ``<experiment>__<profile>__seed<n>``, else None."""
        state, found = self.state(*parse_key(key))
        return found if state == "finished" else None

    def claim(self, experiment_id: str, profile: str, seed: int):
        """``(Claim, None)`` if this process may now train the run, or ``(None, holder)`` if another
        running process has claimed it (``cbcn.harness.claims``)."""
        from cbcn.harness.claims import try_claim

        return try_claim(self.results_dir / ".claims", record_key(experiment_id, profile, seed))

    def claim_configuration(self, config_key: tuple, profile: str, seed: int):
        """As ``claim``, for the training of one configuration (``Experiment.config_key``): rows that
        are the same run share it, so that two sweeps never train it twice (the second waits and
        reuses the first's record)."""
        import hashlib

        from cbcn.harness.claims import try_claim

        digest = hashlib.sha1(repr(config_key).encode()).hexdigest()[:20]
        return try_claim(self.results_dir / ".claims" / "configurations", f"{digest}__{profile}__seed{int(seed)}")

    # --- statuses of runs without a record ---
    def write_status(self, experiment_id: str, profile: str, seed: int, status: str, reason: str) -> None:
        atomic_write_json(self.status_path(experiment_id, profile, seed), {
            "schema_version": SCHEMA_VERSION, "kind": STATUS_KIND, "experiment_id": experiment_id,
            "profile": profile, "seed": seed, "status": status, "reason": reason,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def clear_status(self, experiment_id: str, profile: str, seed: int) -> None:
        try:
            self.status_path(experiment_id, profile, seed).unlink()
        except FileNotFoundError:
            pass

    def statuses(self) -> list[dict]:
        out = []
        if self.status_dir.is_dir():
            for p in sorted(self.status_dir.glob("*.json")):
                try:
                    out.append(read_record(p, kind=STATUS_KIND))
                except StoreError:
                    continue  # statuses are advisory; the next run rewrites them
        return out

    def merge_from(self, other: str | os.PathLike) -> tuple[list[str], list[str]]:
        """Copy the readable records of another store (e.g. a shard's ``--out``) into this one.

        Returns ``(copied, conflicts)``: an existing record with the same key is kept and its key
        reported as a conflict (unless the two are identical).
        """
        src = ResultStore(other)
        if not src.results_dir.is_dir():
            raise StoreError(f"nothing to merge: {src.results_dir} does not exist (is {other} a cbcn --out folder?)")
        records, problems = src.scan()
        problems = [p for p in problems if p.kind != "quarantined"]  # moved aside already: not records
        if problems:
            raise StoreError(f"{src.results_dir} has unreadable records; fix them before merging (or rerun "
                             f"its sweep with --repair):\n  " + "\n  ".join(p.error for p in problems))
        copied, conflicts = [], []
        for r in records:
            key = record_key(r["experiment_id"], r["profile"], r["seed"])
            state, existing = self.state(r["experiment_id"], r["profile"], r["seed"])
            if state == "missing":
                atomic_write_json(self.path(r["experiment_id"], r["profile"], r["seed"]), r)
                copied.append(key)
            elif state == "finished" and existing == r:
                continue
            else:
                conflicts.append(key)
        return copied, conflicts
