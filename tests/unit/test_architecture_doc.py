"""doc/architecture.md names files and symbols for a newcomer to open: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "doc" / "architecture.md"


def test_every_path_the_architecture_page_names_exists() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:vigil|tests|tools|doc|bench)/[\w./-]*)`", text))
    assert len(paths) > 30  # the page is made of them
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []


def test_every_symbol_it_names_in_a_file_is_defined_there() -> None:
    text = DOC.read_text()
    # "`Class.method` in `path`" and "`Class._method` / `_other` in `path`"
    missing = []
    for symbols, path in re.findall(r"((?:`[\w.]+`(?: / )?)+) in `((?:vigil)/[\w./]+\.py)`", text):
        source = (ROOT / path).read_text()
        for symbol in re.findall(r"`([\w.]+)`", symbols):
            name = symbol.split(".")[-1]
            if not re.search(rf"(def|class) {re.escape(name)}\b", source):
                missing.append(f"{symbol} in {path}")
    assert missing == []
