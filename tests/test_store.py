"""Results store: atomic records, schema versions, corrupt files reported not dropped, merge, shards."""
import json

import pytest

from cbcn.harness.experiments import EXPERIMENTS, get_experiment, select
from cbcn.harness.store import (SCHEMA_VERSION, ResultStore, SchemaVersionError, StoreError, parse_key, read_record,
                                record_key)
from cbcn.harness.sweep import Shard, shard_experiments
from cbcn.training.profiles import get_profile


def make_record(exp_id="t2-mnist-lenet-5-10-20-40-xnor", profile="smoke", seed=0, **metrics):
    exp = get_experiment(exp_id)
    return {"schema_version": SCHEMA_VERSION, "kind": "cbcn-result", "experiment_id": exp_id, "profile": profile,
            "seed": seed, "status": "finished", "experiment": exp.to_dict(),
            "metrics": {"error": 5.0, "accuracy": 95.0, "top1": 95.0, "top5": 99.0, **metrics},
            "curves": [], "hardware": {}, "reused_from": None}


def test_write_read_roundtrip_atomic(tmp_path):
    store = ResultStore(tmp_path)
    rec = make_record()
    path = store.write(rec)
    assert path.name == "t2-mnist-lenet-5-10-20-40-xnor__smoke__seed0.json"
    assert read_record(path) == rec
    assert [p.name for p in store.results_dir.iterdir()] == [path.name]     # no temporary left behind
    assert store.state(rec["experiment_id"], "smoke", 0) == ("finished", rec)
    assert store.state(rec["experiment_id"], "smoke", 1) == ("missing", None)
    assert parse_key(record_key("t3-cbcn-k4-s+g", "quick", 3)) == ("t3-cbcn-k4-s+g", "quick", 3)


def test_other_schema_version_is_a_clear_error(tmp_path):
    store = ResultStore(tmp_path)
    rec = make_record()
    path = store.write(rec)
    path.write_text(json.dumps({**rec, "schema_version": SCHEMA_VERSION + 1, "versions": {"cbcn": "9.9"}}))
    with pytest.raises(SchemaVersionError) as e:
        read_record(path)
    msg = str(e.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg and f"reads version {SCHEMA_VERSION}" in msg
    assert str(path) in msg and "9.9" in msg
    records, problems = store.scan()
    assert records == [] and len(problems) == 1 and problems[0].kind == "schema"


def test_corrupt_record_is_reported_never_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    rec = make_record()
    path = store.write(rec)
    path.write_text('{"schema_version": 1, "kind": "cbcn-res')          # truncated
    (store.results_dir / ".x.json.123.tmp").write_text("partial")       # a killed writer's temp file
    records, problems = store.scan()
    assert records == [] and len(problems) == 1
    assert problems[0].kind == "corrupt" and "not valid JSON" in problems[0].error and str(path) in problems[0].error
    state, problem = store.state(rec["experiment_id"], "smoke", 0)
    assert state == "problem"
    with pytest.raises(StoreError, match="refusing to overwrite"):
        store.write(rec)
    assert path.read_text().endswith("cbcn-res")
    moved = store.quarantine(rec["experiment_id"], "smoke", 0)
    assert moved.read_text().endswith("cbcn-res") and not path.exists()
    store.write(rec)
    assert store.scan()[0] == [rec]
    # the quarantined copy is still listed as a problem: kept in sight, not silently dropped
    assert any(p.path == str(moved) for p in store.scan()[1])


def test_record_with_wrong_name_or_missing_fields(tmp_path):
    store = ResultStore(tmp_path)
    p = store.write(make_record())
    bad = p.with_name("t3-xnor-s__smoke__seed0.json")
    bad.write_text(p.read_text())
    with pytest.raises(StoreError, match="does not match its file name"):
        read_record(bad)
    rec = make_record()
    del rec["metrics"]
    p.write_text(json.dumps(rec))
    with pytest.raises(StoreError, match="missing fields"):
        read_record(p)


def test_status_files(tmp_path):
    store = ResultStore(tmp_path)
    store.write_status("t3-xnor-s", "quick", 0, "unavailable", "dataset cifar10 not found")
    assert store.statuses()[0]["reason"] == "dataset cifar10 not found"
    store.write(make_record("t3-xnor-s", profile="quick"))
    assert store.statuses() == []          # a finished run clears its status


def test_merge_shard_stores(tmp_path):
    a, b, merged = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b"), ResultStore(tmp_path / "m")
    a.write(make_record("t3-xnor-s"))
    b.write(make_record("t3-xnor-sc"))
    b.write(make_record("t3-xnor-s", error=7.0))     # same key, different result
    assert merged.merge_from(a.root) == (["t3-xnor-s__smoke__seed0"], [])
    copied, conflicts = merged.merge_from(b.root)
    assert copied == ["t3-xnor-sc__smoke__seed0"] and conflicts == ["t3-xnor-s__smoke__seed0"]
    assert merged.state("t3-xnor-s", "smoke", 0)[1]["metrics"]["error"] == 5.0
    assert merged.merge_from(a.root) == ([], [])      # idempotent


def test_shards_partition_and_keep_identical_runs_together():
    exps = list(EXPERIMENTS)
    profile = get_profile("paper")
    parts = [shard_experiments(exps, Shard(i, 4), profile) for i in range(1, 5)]
    ids = [e.id for p in parts for e in p]
    assert sorted(ids) == sorted(e.id for e in exps) and len(ids) == len(set(ids))
    assert max(map(len, parts)) - min(map(len, parts)) <= 4
    twins = {"t2-cifar10-resnet18-16-16-32-64-cbcn", "t3-cbcn-k4-sg", "t4-cifar10-resnet18-16-16-32-64-cbcn"}
    assert sum(bool(twins & {e.id for e in p}) for p in parts) == 1
    assert shard_experiments(select(table=5), None, profile) == select(table=5)
    for bad in ("0/4", "5/4", "1-4", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)
    assert str(Shard.parse("2/4")) == "2/4"


def test_merge_from_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="nothing to merge"):
        ResultStore(tmp_path / "merged").merge_from(tmp_path / "typo")
