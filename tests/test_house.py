"""The house stays as built: import contracts (layers, independent sources, what drivers may
take), no import cycle among fieldhub's modules, nothing imports the ``cli.py`` entry point, and
ruff and mypy are clean. These run in CI through ./run-tests like every other test."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
PACKAGES = ("fieldhub", "drivers")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_import_contracts_are_kept() -> None:
    proc = _run(str(BIN / "lint-imports"), "--no-cache")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_is_clean() -> None:
    proc = _run(str(BIN / "ruff"), "check", "cli.py", "fieldhub", "drivers", "simulators", "tests", "bench", "scripts")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_clean() -> None:
    proc = _run(sys.executable, "-m", "mypy", "--no-incremental")  # files and settings: pyproject.toml
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _module_imports() -> dict[str, set[str]]:
    """Module name -> the fieldhub/drivers modules it imports (at any depth in the file)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in names:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_no_import_cycles() -> None:
    graph = _module_imports()
    assert "fieldhub.core.log" in graph and "fieldhub.core.records" in graph["fieldhub.core.log"]
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    # a package's __init__ importing its own submodules is not an arrow back up
    real = [c for c in cycles if not all(c[0].startswith(n + ".") or n.startswith(c[0] + ".") or n == c[0] for n in c)]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_nothing_imports_the_entry_point() -> None:
    offenders = []
    for folder in ("fieldhub", "drivers", "simulators", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "cli" and not node.level:
                    offenders.append(str(path.relative_to(ROOT)))
                elif isinstance(node, ast.Import) and any(a.name == "cli" for a in node.names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cli.py is the entry point only; import fieldhub.cli.* instead: {offenders}"
