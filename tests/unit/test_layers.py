"""The layers of docs/layout.md, enforced: imports point down, never up, never in a circle.

Every module of every package is read with ``ast``: top-level imports, lazy imports
inside functions, and ``importlib.import_module("...")`` / ``__import__("...")`` calls
with a literal name all count. A violation fails with its file and line.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("feedloop", "feature_store", "infra", "spark", "models", "serving", "sources", "dags", "bench", "dashboard")
TOP_FLOOR = {REPO / "feedloop" / "cli.py"}  # the command line: may import everything, nothing imports it

# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "feedloop": set(),
    "feature_store": {"feedloop"},
    "infra": {"feedloop"},
    "spark": {"feedloop", "feature_store", "models"},  # models: the online learner's consumer loop
    "models": {"feedloop", "feature_store"},
    "serving": {"feedloop", "feature_store"},
    "sources": {"feedloop", "feature_store", "spark", "infra"},
    "dags": {"feedloop"},
    "bench": set(PACKAGES) - {"bench"},
    # the dashboard reads what `feedloop status` (infra, core) and the registry (models) read, and the API's
    # metric names (serving); it starts nothing and nothing imports it
    "dashboard": {"feedloop", "infra", "models", "serving"},
}
FORBIDDEN_LIBRARIES = {  # heavy or wrong-room third-party imports
    "serving": {"tensorflow", "pyspark", "keras"},
    "dags": {"tensorflow", "pyspark", "keras"},
    "feature_store": {"tensorflow", "keras"},
    "infra": {"tensorflow", "pyspark", "keras"},
    "feedloop": {"tensorflow", "keras"},
    "dashboard": {"tensorflow", "pyspark", "keras"},
}


def imports(path: Path):
    """(module name, line) of every import in ``path``, lazy ones and import_module calls included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for alias in node.names:  # `from feedloop import cli` imports feedloop.cli
                yield f"{node.module}.{alias.name}", node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import (the project uses absolute imports only)")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno


def modules(package: str):
    return sorted(p for p in (REPO / package).rglob("*.py") if ".venv" not in p.parts)


def violations() -> tuple[list[str], dict[str, set[str]]]:
    found, edges = [], {p: set() for p in PACKAGES}
    cli = "feedloop.cli"
    for package in PACKAGES:
        for path in modules(package):
            where = path.relative_to(REPO)
            for name, line in imports(path):
                if name == cli or name.startswith(cli + "."):
                    if path not in TOP_FLOOR:
                        found.append(f"{where}:{line}: imports the command line ({name}); nothing may")
                    continue
                if path in TOP_FLOOR:
                    continue
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    edges[package].add(top)
                    if top not in ALLOWED[package]:
                        found.append(f"{where}:{line}: {package} imports {name} (allowed: {sorted(ALLOWED[package])})")
                if top in FORBIDDEN_LIBRARIES.get(package, set()):
                    found.append(f"{where}:{line}: {package} imports {name}")
    return found, edges


def test_every_import_points_down():
    found, _ = violations()
    assert not found, "layer violations:\n" + "\n".join(found)


def test_no_cycle_between_packages():
    _, edges = violations()
    # a cycle of any length: a package reachable from itself
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    cycles = sorted(p for p in PACKAGES if p in reach(p))
    assert not cycles, f"packages in an import cycle: {cycles}"


def test_no_module_shadows_a_package_it_could_mean():
    """`feedloop/spark.py` beside `spark/` was one: a reader cannot tell which `spark` is meant."""
    names = set(PACKAGES) | {"redis", "kafka", "mlflow", "airflow", "tensorflow", "pyspark", "supervisor", "pyhive", "pandas"}
    # bench/ is exempt: `python -m bench.serving` is named after what it measures
    shadows = [str(p.relative_to(REPO)) for package in set(PACKAGES) - {"bench"} for p in modules(package)
               if p.stem in names]
    assert not shadows, f"modules named after a package: {shadows}"


def test_the_check_sees_lazy_imports_and_import_module(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from spark import x\n    importlib.import_module('models.train')\n")
    assert [name for name, _ in imports(source)] == ["os", "spark", "spark.x", "models.train"]


def test_no_function_outside_bench_is_longer_than_80_lines():
    long = []
    for package in set(PACKAGES) - {"bench"}:
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_packages_are_installed_with_the_project():
    """A package missing from setup.cfg imports from the repo root only, not from Airflow's or supervisord's tasks."""
    text = (REPO / "setup.cfg").read_text()
    missing = [p for p in set(PACKAGES) - {"dags"} if f"\n    {p}\n" not in text]
    assert not missing, f"add to [options.packages.find] include: {missing}"


def test_pairs_of_packages_are_not_mutually_dependent():
    _, edges = violations()
    both = [(a, b) for a, b in itertools.combinations(PACKAGES, 2) if b in edges[a] and a in edges[b]]
    assert not both, both


def test_feedloop_status_reads_progress_without_tensorflow_or_spark(tmp_path):
    """`feedloop status` runs on every `make status`: it must not pay for (or need) TensorFlow or Spark."""
    import json
    import subprocess
    import sys

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stream-learner.json").write_text(json.dumps(
        {"batch_id": 3, "updated_at": 0, "version": "7+online.2", "reason": "accepted", "lag_s": 1.5}))
    code = ("import sys; from feedloop.settings import Settings; from infra.stack import stream_status; "
            f"print(stream_status(Settings(var_dir={str(tmp_path)!r}))); "
            "print(sorted(m for m in ('tensorflow', 'pyspark', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "[]", out.stdout
    assert "stream-learner: 7+online.2 after batch 3" in out.stdout
    assert "stream-events: no batch processed yet" in out.stdout
