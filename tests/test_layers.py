"""The package layout's rules (docs/design.md): what each layer may import.

Checked on the source's import statements, including those under TYPE_CHECKING and inside
functions, so a rule cannot be broken quietly by a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
WIRE_AND_STORAGE = ("litestar", "sse_starlette", "sqlalchemy", "app.store", "app.api", "app.cluster", "app.wire")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def breaking(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", sorted((APP / "control").glob("*.py")), ids=lambda p: p.name)
def test_the_run_core_knows_no_http_and_no_storage(path: Path) -> None:
    assert breaking(path, WIRE_AND_STORAGE) == []


def test_domain_errors_carry_no_http() -> None:
    assert breaking(APP / "errors.py", ("litestar", "starlette", "app.api")) == []
    assert "status" not in (APP / "errors.py").read_text().split('"""', 2)[2]


@pytest.mark.parametrize("path", sorted((APP / "wire").glob("*.py")), ids=lambda p: p.name)
def test_the_wire_encoding_knows_the_events_and_nothing_above_them(path: Path) -> None:
    assert breaking(path, (*WIRE_AND_STORAGE[:-1], "app.runs", "app.services")) == []
    assert {m for m in imported_modules(path) if m.startswith("app.")} <= {"app.control.events", "app.wire"}


@pytest.mark.parametrize("path", sorted((APP / "runs").glob("*.py")), ids=lambda p: p.name)
def test_run_control_knows_no_transport(path: Path) -> None:
    assert breaking(path, ("litestar", "sse_starlette", "app.api", "app.cluster")) == []


@pytest.mark.parametrize("path", sorted((APP / "simulator").glob("*.py")), ids=lambda p: p.name)
def test_the_simulator_knows_nothing_of_the_product_it_serves(path: Path) -> None:
    product = ("app.agent", "app.api", "app.control", "app.runs", "app.services", "app.store", "app.cluster")
    assert breaking(path, product) == []
