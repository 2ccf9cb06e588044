"""A command line run in the test's process, its output captured as an operator would see
it: the exit status, what it printed and the errors (never a traceback).

    class Cli(InProcess):
        def __call__(self, *args: str) -> Result:
            return self.run(lambda: main(["--url", self.url, *args]))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def rows(self) -> list[list[str]]:
        return table_rows(self.out)

    def fields(self) -> dict[str, str]:
        return table_fields(self.out)


def table_rows(text: str) -> list[list[str]]:
    """A table's data rows, split on the column gaps (cells hold single spaces)."""
    lines = text.splitlines()
    assert set(lines[1].replace(" ", "")) <= {"-"}, f"no header rule in:\n{text}"
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[2:]]


def table_fields(text: str) -> dict[str, str]:
    """A ``show`` table as {field: value}."""
    assert text.splitlines()[0].split() == ["FIELD", "VALUE"]
    return {row[0]: row[1] if len(row) > 1 else "" for row in table_rows(text)}


class InProcess:
    """Runs a command line against the server at ``url`` in this process, and keeps
    every output it produced (``seen``)."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys
        self.seen: list[str] = []

    def run(self, command: Callable[[], int]) -> Result:
        """``command``'s exit status and output; it prints no traceback."""
        self.capsys.readouterr()
        code = command()
        captured = self.capsys.readouterr()
        self.seen += [captured.out, captured.err]
        assert "Traceback" not in captured.err
        return Result(code, captured.out, captured.err)
