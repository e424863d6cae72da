"""docs/ARCHITECTURE.md matches the tree: every part and module it names exists, every module of
``cbcn/`` is named, and ``triton_kernels`` imports only the public API it says."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _documented_parts() -> dict[str, set[str]]:
    """part -> module names, from the table rows ``| `cbcn.part` | `mod`, `mod`, `sub/` (...) | ... |``."""
    parts = {}
    for line in DOC.splitlines():
        m = re.match(r"\| `cbcn\.(\w+)` \| (.+?) \|", line)
        if m:
            parts[m.group(1)] = set(re.findall(r"`(\w+)/?`", m.group(2)))
    return parts


def test_every_part_and_module_is_documented_and_exists():
    parts = _documented_parts()
    on_disk = {p.name for p in (ROOT / "cbcn").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(parts) == on_disk == {"nn", "data", "training", "onebit", "harness", "cli"}
    for part, modules in parts.items():
        folder = ROOT / "cbcn" / part
        top = {p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")}
        top |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
        nested = {p.stem for p in folder.rglob("*.py")} | {p.parent.name for p in folder.rglob("__init__.py")}
        assert top <= modules, f"cbcn/{part}: {sorted(top - modules)} not in docs/ARCHITECTURE.md"
        assert modules <= nested, f"cbcn/{part}: docs/ARCHITECTURE.md names {sorted(modules - nested)}, not on disk"


def test_top_level_of_cbcn_is_the_five_parts_and_the_shared_helpers():
    top = {p.name for p in (ROOT / "cbcn").iterdir() if not p.name.startswith(("_", "."))}
    assert top == {"nn", "data", "training", "onebit", "harness", "cli", "errors.py", "fileio.py", "memo.py"}
    listing = DOC.split("```text", 1)[1].split("```", 1)[0]
    for name in top:
        assert name.removesuffix(".py") in listing


def test_triton_kernels_use_only_public_names_of_cbcn():
    allowed = {"cbcn.onebit.backends.contract", "cbcn.onebit.backends.reference", "cbcn.onebit.backends.operands",
               "cbcn.nn.cif"}
    for path in (ROOT / "triton_kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cbcn"):
                assert node.module in allowed, f"{path.name} imports {node.module}"
                assert not any(a.name.startswith("_") for a in node.names), f"{path.name}: private name"


def _imports(path: Path) -> set[str]:
    """Every ``cbcn...`` module a file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "cbcn" or m.startswith("cbcn.")}


def test_no_part_of_cbcn_imports_the_command_line():
    """The command line sits on top: before, ``harness.summary`` and ``onebit.export`` imported
    ``cbcn.cli`` for its options, and ``cbcn.cli`` imported them back."""
    for path in (ROOT / "cbcn").rglob("*.py"):
        if path.is_relative_to(ROOT / "cbcn" / "cli"):
            continue
        bad = {m for m in _imports(path) if m == "cbcn.cli" or m.startswith("cbcn.cli.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
