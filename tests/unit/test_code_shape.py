"""Shapes the code keeps (issue 14): short API functions, no hand-copied row mappers."""

from __future__ import annotations

import ast
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


def test_the_store_builds_records_through_one_mapping() -> None:
    """A mapper that names every column of a row again is what vigil.store.mapping ended."""
    tree = ast.parse((VIGIL / "store" / "sql.py").read_text())
    copied = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and sum(
            1
            for kw in call.keywords
            if isinstance(kw.value, ast.Attribute)
            and isinstance(kw.value.value, ast.Name)
            and kw.value.value.id == "row"
            and kw.value.attr == kw.arg
        )
        >= 4
    ]
    assert copied == []
