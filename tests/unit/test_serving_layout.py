"""The serving package stays a house a newcomer can live in (issue 14), checked from its source with ast.

* no function in serving/ longer than 80 lines;
* routes are declared at module level on a router, never inside a function (no closures
  over the app's clients: they live on ``app.state.services``);
* serving/ imports none of models/, spark/, TensorFlow or PySpark (docs/DESIGN.md, Layers),
  and one Kafka library only (confluent-kafka, not kafka-python).
"""

from __future__ import annotations

import ast

import pytest

from feedloop.settings import REPO_ROOT

SERVING = REPO_ROOT / "serving"
MAX_FUNCTION_LINES = 80
FORBIDDEN_IMPORTS = {"models", "spark", "tensorflow", "keras", "pyspark", "kafka"}
ROUTE_DECORATORS = {"get", "post", "put", "patch", "delete", "api_route", "route", "exception_handler", "middleware"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _modules() -> list[tuple[str, ast.Module]]:
    paths = sorted(SERVING.rglob("*.py"))
    assert paths, f"no Python files under {SERVING}"
    return [(str(p.relative_to(REPO_ROOT)), ast.parse(p.read_text(), filename=str(p))) for p in paths]


def long_functions(modules: list[tuple[str, ast.Module]], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (n lines)`` for every function (nested ones included) longer than ``limit``."""
    found = []
    for name, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, FUNCTIONS):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _is_route_decorator(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr in ROUTE_DECORATORS


def nested_routes(modules: list[tuple[str, ast.Module]]) -> list[str]:
    """``file:line name`` for every route or handler declared inside a function."""
    found = []
    for name, tree in modules:
        for outer in ast.walk(tree):
            if not isinstance(outer, FUNCTIONS):
                continue
            for inner in ast.walk(outer):
                if inner is not outer and isinstance(inner, FUNCTIONS) and any(
                        _is_route_decorator(d) for d in inner.decorator_list):
                    found.append(f"{name}:{inner.lineno} {inner.name} (inside {outer.name})")
    return found


def forbidden_imports(modules: list[tuple[str, ast.Module]]) -> list[str]:
    found = []
    for name, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            found += [f"{name}:{node.lineno} imports {top}" for top in tops if top in FORBIDDEN_IMPORTS]
    return found


def test_no_function_in_serving_is_longer_than_80_lines():
    too_long = long_functions(_modules())
    assert not too_long, "split these functions:\n" + "\n".join(too_long)


def test_the_check_names_file_and_line():
    source = "def short():\n    pass\n\n\nasync def long():\n" + "    x = 1\n" * 80
    found = long_functions([("serving/example.py", ast.parse(source))])
    assert found == ["serving/example.py:5 long (81 lines)"]


def test_routes_are_declared_at_module_level():
    inside = nested_routes(_modules())
    assert not inside, "declare these on a module-level APIRouter:\n" + "\n".join(inside)


def test_the_route_check_finds_a_closure():
    source = "def create_app():\n    @app.get('/x')\n    async def x():\n        pass\n"
    assert nested_routes([("serving/example.py", ast.parse(source))]) == ["serving/example.py:3 x (inside create_app)"]


def test_serving_imports_no_heavy_layer_and_one_kafka_library():
    found = forbidden_imports(_modules())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("resource", ["feeds", "users", "items", "events", "health", "metrics"])
def test_one_router_module_per_resource(resource):
    from importlib import import_module

    from fastapi import APIRouter

    module = import_module(f"serving.routes.{resource}")
    assert isinstance(module.router, APIRouter) and module.router.routes
