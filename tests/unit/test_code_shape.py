"""Shapes the code keeps (issue 14): short API functions, no hand-copied row mappers."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

VIGIL = Path(__file__).resolve().parents[2] / "vigil"


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (
            f"{path.relative_to(VIGIL.parent)}:{node.lineno} {node.name}",
            node.end_lineno - node.lineno + 1,
        )
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]


def test_no_function_of_the_api_is_longer_than_150_lines() -> None:
    long = [
        (name, n)
        for p in sorted((VIGIL / "api").glob("*.py"))
        for name, n in _functions(p)
        if n > 150
    ]
    assert long == []


def _copies_a_row(call: ast.Call) -> bool:
    """``Record(x=row.x, y=row.y, ...)`` or ``Record(r.x, r.y, ...)``: four fields or more
    read off one variable, by name or in order."""
    by_name = sum(
        1
        for kw in call.keywords
        if isinstance(kw.value, ast.Attribute)
        and isinstance(kw.value.value, ast.Name)
        and kw.value.value.id == "row"
        and kw.value.attr == kw.arg
    )
    in_order = Counter(
        arg.value.id
        for arg in call.args
        if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name)
    )
    return by_name >= 4 or max(in_order.values(), default=0) >= 4


def test_the_store_builds_records_through_one_mapping() -> None:
    """A mapper that names every column of a row again is what vigil.store.mapping ended."""
    copied = [
        f"{path.name}: {node.name}"
        for path in sorted((VIGIL / "store").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for call in ast.walk(node)
        if isinstance(call, ast.Call) and _copies_a_row(call)
    ]
    assert copied == []
