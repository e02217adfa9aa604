"""The package's shape (issue 13): one import name, no import cycles, short functions.

The layer contract itself is ``[tool.importlinter]`` in pyproject.toml, checked by
``lint-imports`` in ``make test``; ``test_layer_contracts_hold`` runs it here too so a
plain ``pytest`` run catches a broken layer.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import grimp
import pytest

import fedcredit

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 80


def _tarjan_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (every import cycle lies in one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        # Iterative Tarjan: (module, iterator over its imports).
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def test_tarjan_finds_a_planted_cycle() -> None:
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.c")
    g.add_import(importer="p.c", imported="p.a")
    g.add_import(importer="p.d", imported="p.a")
    assert _tarjan_cycles(g) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycles_between_modules() -> None:
    # Imports inside functions count (they run); `if TYPE_CHECKING:` ones do not.
    graph = grimp.build_graph("fedcredit", exclude_type_checking_imports=True)
    assert len(graph.modules) > 100, "the graph should cover the whole package"
    assert _tarjan_cycles(graph) == []


def _functions(path: Path) -> list[tuple[int, str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (n.end_lineno - n.lineno + 1, n.name, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno is not None
    ]


def test_no_function_over_80_lines() -> None:
    package = Path(fedcredit.__file__).parent
    # fedcredit/ links the top-level folders: walk through the links (Path.rglob does not).
    files = [
        Path(d) / f
        for d, _, names in os.walk(package, followlinks=True)
        for f in names
        if f.endswith(".py") and "_pb2" not in f
    ]
    assert len(files) > 100
    long = [
        f"{p.relative_to(package)}:{line} {name} ({n} lines)"
        for p in files
        for n, name, line in _functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert long == [], f"expected no function over {MAX_FUNCTION_LINES} lines, got {long}"


OLD_TOP_NAMES = {
    "common",
    "world",
    "node",
    "consent",
    "ledger",
    "coordinator",
    "clients",
    "training",
    "market",
}


def _old_style_imports(path: Path) -> list[str]:
    found = []
    for n in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = (
            [a.name for a in n.names]
            if isinstance(n, ast.Import)
            else [n.module or ""]
            if isinstance(n, ast.ImportFrom) and n.level == 0
            else []
        )
        found += [f"{path}:{n.lineno} {m}" for m in names if m.split(".")[0] in OLD_TOP_NAMES]
    return found


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """`pytest` puts the source root on sys.path, so `import common` would still work
    there, loading a second copy of a module under another name: nothing may do it."""
    files = [
        Path(root) / f
        for top in ("fedcredit", "tests", "bench")
        for root, _, names in os.walk(ROOT / top, followlinks=True)
        for f in names
        if f.endswith(".py") and "_pb2" not in f
    ]
    assert len(files) > 200
    bad = [hit for p in files for hit in _old_style_imports(p)]
    assert bad == []


def test_bare_name_check_sees_an_old_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom common.errors import X\nimport ledger.log as l\n")
    assert [h.split()[-1] for h in _old_style_imports(src)] == ["common.errors", "ledger.log"]


def test_length_check_sees_a_long_function(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n" + "    x = 1\n" * 85)
    assert _functions(src) == [(86, "f", 1)]


def test_layer_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail(
            f"expected lint-imports beside {sys.executable} (import-linter is a dev dependency)"
        )
    out = subprocess.run(
        [str(exe), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_service_module_is_published_or_private() -> None:
    """A new module of a service must be put on one side on purpose: in the service's
    published list, or among the private modules its contract keeps others from."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    published = config["tool"]["fedcredit"]["published"]
    contracts = {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}
    assert set(published) == {"consent", "ledger", "node", "coordinator", "policies", "market"}
    for service, public in published.items():
        private = {
            m.removeprefix(f"fedcredit.{service}.")
            for m in contracts[f"{service}-private"]["forbidden_modules"]
        }
        on_disk = {p.stem for p in (ROOT / service).glob("*.py") if p.stem != "__init__"}
        assert not private & set(public), service
        assert on_disk == private | set(public), (
            f"{service}: unclassified {sorted(on_disk - private - set(public))}, "
            f"gone {sorted((private | set(public)) - on_disk)}"
        )
        sdk = set(contracts["sdk"]["forbidden_modules"])
        assert {f"fedcredit.{service}.{m}" for m in private} <= sdk, service


@pytest.mark.slow
def test_wheel_installs_only_the_fedcredit_name(tmp_path: Path) -> None:
    """`pip install .` into an empty venv adds exactly one top-level import name."""
    # Without PYTHONPATH: training/run/simulation.py sets it in-process for Ray's workers,
    # so after a simulation test in the same pytest worker it would name the source tree.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Build from a copy: setuptools builds in the source folder and would reuse a stale
    # build/ left there (files deleted since would still land in the wheel).
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "var", "*.egg-info", "__pycache__", ".*_cache", "results"
        ),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    (wheel,) = wheels.glob("fedcredit-*.whl")
    env_dir = tmp_path / "empty"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
        env=clean,
    )
    probe = (
        "import importlib.metadata as m, json, importlib.util as u;"
        "d = m.distribution('fedcredit');"
        "tops = sorted({f.parts[0] for f in d.files if not f.parts[0].endswith('.dist-info')"
        " and f.parts[0] not in ('..',)});"
        "names = sorted(k for k, v in m.packages_distributions().items() if 'fedcredit' in v);"
        "print(json.dumps({'files_top': tops, 'import_names': names,"
        " 'common': u.find_spec('common') is not None, 'v1': u.find_spec('fedcredit.v1') is not None,"
        " 'flwr_app': any(f.as_posix() == 'fedcredit/training/flwr_app/pyproject.toml' for f in d.files)}))"
    )
    # Run outside the source tree: `python -c` puts the working directory on sys.path.
    out = subprocess.run(
        [str(py), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {
        "files_top": ["fedcredit"],
        "import_names": ["fedcredit"],
        "common": False,
        "v1": True,
        "flwr_app": True,
    }
    # Every subpackage of the source tree is in the wheel (a broken link would drop one).
    expected = sorted(
        d.name for d in (ROOT / "fedcredit").iterdir() if (d / "__init__.py").exists()
    )
    listing = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(sorted({f.parts[1] for f in"
         " m.distribution('fedcredit').files if f.parts[0] == 'fedcredit' and len(f.parts) > 2"
         " and f.parts[1] != '__pycache__'}))"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True, env=clean,
    )  # fmt: skip
    assert listing.stdout.strip() == repr(expected)
    assert len(expected) >= 9
    fail = subprocess.run(
        [str(py), "-c", "import common"], capture_output=True, timeout=60, cwd=tmp_path, env=clean
    )
    assert fail.returncode != 0
    shutil.rmtree(env_dir)
