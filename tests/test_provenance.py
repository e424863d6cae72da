"""Provenance: which commit produced a result, also when cbcn runs from an installed copy."""
from pathlib import Path

import cbcn.harness.provenance as provenance


def test_installed_copy_records_the_working_checkout(tmp_path, monkeypatch):
    package_dir = Path(provenance.__file__).resolve().parent

    def fake_git(*args, cwd):
        if Path(cwd) == package_dir:
            return None  # an installed copy: not inside a git checkout
        return "abc123" if args[0] == "rev-parse" else ""

    monkeypatch.setattr(provenance, "_git", fake_git)
    monkeypatch.chdir(tmp_path)
    revision = provenance.git_revision.__wrapped__  # the cached function, uncached
    assert revision() == {"revision": "unknown (not a git checkout)", "dirty": None}
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "cbcn"\n')
    rev = revision()
    assert rev["revision"] == "abc123" and rev["dirty"] is False and "installed copy" in rev["source"]
