"""Layering: the runtime knows no scheme, and the CKKS engine knows no runtime. Every import in
``src/p3eft/runtime`` and ``src/p3eft/fhe`` (top-level or inside a function) is parsed with ``ast``;
none may reach a package above its own layer."""

from __future__ import annotations

import ast
from pathlib import Path

import p3eft

RUNTIME = Path(p3eft.__file__).parent / "runtime"
FHE = Path(p3eft.__file__).parent / "fhe"
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


def _offenders(folder: Path, forbidden: tuple[str, ...] = SCHEMES) -> list[str]:
    return sorted(
        f"{path.name} imports {mod}"
        for path in folder.rglob("*.py")
        for mod in imported_modules(path)
        if any(mod == s or mod.startswith(s + ".") for s in forbidden)
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


def test_fhe_imports_no_runtime():
    """The CKKS engine is a library below the parties: the networked roles live with their scheme
    (issue 14, layering), so ``p3eft.fhe`` imports nothing from ``p3eft.runtime``."""
    assert FHE.is_dir() and len(list(FHE.glob("*.py"))) > 5
    assert _offenders(FHE, ("p3eft.runtime",)) == []


def test_the_fhe_check_sees_runtime_imports(tmp_path):
    """Negative control: a lazy ``from p3eft.runtime...`` or a plain ``import p3eft.runtime`` is caught."""
    (tmp_path / "roles.py").write_text("def serve():\n    from p3eft.runtime.launch import start_party\n")
    (tmp_path / "net.py").write_text("import p3eft.runtime\n")
    assert _offenders(tmp_path, ("p3eft.runtime",)) == [
        "net.py imports p3eft.runtime",
        "roles.py imports p3eft.runtime.launch",
        "roles.py imports p3eft.runtime.launch.start_party",
    ]
