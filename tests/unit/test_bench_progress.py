"""Every bench a person runs shows progress with an ETA and ends with a one-line summary (issue 16)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py")
                 if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body))


def calls(tree: ast.AST, name: str) -> int:
    return sum(isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))
               and (n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id) == name for n in ast.walk(tree))


def test_every_bench_with_a_main_counts_steps_and_prints_a_summary():
    assert len(BENCHES) >= 10, BENCHES  # the glob found the benches, not an empty folder
    missing = []
    for path in BENCHES:
        tree = ast.parse(path.read_text())
        uses_steps = any(isinstance(n, ast.ImportFrom) and n.module == "feedloop.eta" for n in tree.body)
        if not (uses_steps and calls(tree, "Steps") and calls(tree, "summary")
                and (calls(tree, "step") or calls(tree, "at"))):
            missing.append(path.name)
    assert missing == []


def test_a_bench_run_prints_eta_lines_then_its_summary_then_the_json():
    run = subprocess.run([sys.executable, "-m", "bench.metrics_cost", "--what", "observe", "--n", "20",
                          "--reps", "2", "--rounds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stderr.splitlines() if line.startswith("[bench.metrics_cost]")]
    assert [line.split()[1] for line in progress[:2]] == ["1/2", "2/2"], run.stderr
    assert "ETA" in progress[0] and "elapsed" in progress[0]
    assert "done in" in progress[-1] and "µs per observe call" in progress[-1]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["rounds"] == 2 and "loadavg_1m" in report
