"""The package's layering: `methods/` and `data/` never import `train/` (the arrows run
from the trainer down to the methods, the data and the models, never back up)."""
from __future__ import annotations

import ast
from pathlib import Path

import mllmcl_ray

PKG = Path(mllmcl_ray.__file__).parent
# moving to presets/ (issue 15, the study layer); drop once it has moved
PENDING: set[str] = set()


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the mllmcl_ray modules a file imports (relative imports resolved)."""
    pkg = ["mllmcl_ray", *path.relative_to(PKG).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("mllmcl_ray")}


def test_imported_modules_resolves_relative_imports():
    got = imported_modules(PKG / "methods" / "ewc.py")
    assert "mllmcl_ray.models.training" in got and "mllmcl_ray.methods.base" in got


def test_methods_and_data_never_import_train():
    bad = {}
    for layer in ("methods", "data"):
        for path in sorted((PKG / layer).rglob("*.py")):
            rel = path.relative_to(PKG).as_posix()
            up = sorted(m for m in imported_modules(path)
                        if m == "mllmcl_ray.train" or m.startswith("mllmcl_ray.train."))
            if up and rel not in PENDING:
                bad[rel] = up
    assert bad == {}
