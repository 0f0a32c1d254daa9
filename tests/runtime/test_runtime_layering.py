"""Layering: the runtime knows no scheme. Every import in ``src/p3eft/runtime`` (top-level or inside
a function) is parsed with ``ast``; none may reach a scheme package."""

from __future__ import annotations

import ast
from pathlib import Path

import p3eft

RUNTIME = Path(p3eft.__file__).parent / "runtime"
SCHEMES = ("p3eft.obfuscatune", "p3eft.privtuner", "p3eft.fhe", "p3eft.wireless", "p3eft.tuning")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement in ``path`` names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _offenders(folder: Path) -> list[str]:
    return sorted(
        f"{path.name} imports {mod}"
        for path in folder.rglob("*.py")
        for mod in imported_modules(path)
        if any(mod == s or mod.startswith(s + ".") for s in SCHEMES)
    )


def test_runtime_imports_no_scheme():
    assert RUNTIME.is_dir() and len(list(RUNTIME.glob("*.py"))) > 5
    assert _offenders(RUNTIME) == []


def test_the_check_sees_imports(tmp_path):
    """Negative control: a module that imports a scheme, even lazily inside a function, is caught."""
    (tmp_path / "bad.py").write_text("def f():\n    from p3eft.obfuscatune.enclave import Enclave\n")
    (tmp_path / "bad2.py").write_text("import p3eft.fhe.roles as r\n")
    assert _offenders(tmp_path) == [
        "bad.py imports p3eft.obfuscatune.enclave",
        "bad.py imports p3eft.obfuscatune.enclave.Enclave",
        "bad2.py imports p3eft.fhe.roles",
    ]
