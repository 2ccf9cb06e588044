"""How the CLI shows API answers: aligned tables for people, the API's JSON for scripts.

Tables: uppercase headers over a rule, columns two spaces apart, timestamps as local ISO
time to the second, durations as ``1.23s`` (minutes and hours past a minute), booleans as
``yes``/``no``, missing values as ``-``. ``--json`` prints the server's JSON unchanged
(a list as an array, a single record as an object), so scripts see the documented schema.

The table formatter is written here rather than taken from a library: it is a dozen lines,
and a dependency for it would outweigh them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

Cell = Callable[[Mapping[str, Any]], str]
Column = tuple[str, Cell]


# ----------------------------------------------------------------------- value formatting


def text(value: Any) -> str:
    """A value as one table cell."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value) if value else "-"
    # A newline would break the row apart; a table cell is one line.
    return " ".join(str(value).split())


def timestamp(value: float | None) -> str:
    """Epoch seconds as local ISO time to the second; 0 and None (never) are ``-``."""
    if not value:
        return "-"
    return datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def elapsed(start: float | None, end: float | None) -> str:
    """The time from start to end; ``-`` until both are known."""
    if start is None or end is None:
        return "-"
    return duration(end - start)


def fencing(methods: Sequence[Mapping[str, Any]]) -> str:
    """Fencing levels in the syntax ``--fence`` accepts, in order (secrets come masked)."""
    if not methods:
        return "-"
    out = []
    for m in methods:
        options = m.get("options") or {}
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        out.append(f"{m.get('driver')}:{opts}" if opts else str(m.get("driver")))
    return "; ".join(out)


# -------------------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    rule = ["-" * w for w in widths]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [lines[0], rule, *lines[1:]]
    )


def records(columns: Sequence[Column], items: Iterable[Mapping[str, Any]]) -> str:
    """One row per item, one column per (header, cell function)."""
    return table([h for h, _ in columns], ([cell(i) for _, cell in columns] for i in items))


def fields(columns: Sequence[Column], item: Mapping[str, Any]) -> str:
    """One record as FIELD / VALUE rows (what ``show`` prints)."""
    return table(["FIELD", "VALUE"], ([h.lower(), cell(item)] for h, cell in columns))


class Field:
    """A cell that shows one field of the record: ``key`` names it, ``show`` renders it.

    ``openstack vigil`` (vigil.osc) prints the raw value of ``key`` for ``-f json|yaml|value``.
    """

    def __init__(self, key: str, show: Callable[[Any], str] = text) -> None:
        self.key = key
        self.show = show

    def __call__(self, item: Mapping[str, Any]) -> str:
        return self.show(item.get(self.key))


def field(name: str) -> Cell:
    return Field(name)


def time_field(name: str) -> Cell:
    return Field(name, timestamp)


class Output:
    """Where and how results are printed; chosen once from ``--json``."""

    def __init__(self, *, as_json: bool, stream: TextIO) -> None:
        self.as_json = as_json
        self.stream = stream

    def line(self, message: str) -> None:
        """A confirmation for people; scripts using --json get nothing (the API sent none)."""
        if not self.as_json:
            print(message, file=self.stream)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False), file=self.stream)

    def many(self, columns: Sequence[Column], items: Sequence[Mapping[str, Any]]) -> None:
        if self.as_json:
            self.json(list(items))
        else:
            print(records(columns, items), file=self.stream)

    def one(self, columns: Sequence[Column], item: Mapping[str, Any]) -> None:
        if self.as_json:
            self.json(item)
        else:
            print(fields(columns, item), file=self.stream)


# ------------------------------------------------------------------ what each noun shows

SEGMENT: Sequence[Column] = [
    ("NAME", field("name")),
    ("DEFAULT POLICY", field("default_policy")),
    ("MAX FAILED SHARE", field("max_failed_share")),
    ("MAX PARALLEL EVACUATIONS", field("max_parallel_evacuations")),
    ("PAUSED", field("paused")),
    ("PAUSE REASON", field("pause_reason")),
    ("DESCRIPTION", field("description")),
]

HOST_LIST: Sequence[Column] = [
    ("NAME", field("name")),
    ("SEGMENT", field("segment")),
    ("STATE", field("state")),
    ("MAINTENANCE", field("maintenance")),
    ("RESERVED", field("reserved")),
    ("HEARTBEAT AGE", Field("heartbeat_age", duration)),
    ("STATE SINCE", time_field("state_changed_at")),
    ("REASON", field("state_reason")),
]

HOST: Sequence[Column] = [
    ("NAME", field("name")),
    ("SEGMENT", field("segment")),
    ("STATE", field("state")),
    ("STATE REASON", field("state_reason")),
    ("STATE SINCE", time_field("state_changed_at")),
    ("MAINTENANCE", field("maintenance")),
    ("RESERVED", field("reserved")),
    ("FENCING", Field("fencing", lambda f: fencing(f or []))),
    ("HEARTBEAT AGE", Field("heartbeat_age", duration)),
]

INSTANCE: Sequence[Column] = [
    ("ID", field("id")),
    ("NAME", field("name")),
    ("HOST", field("host")),
    ("STATUS", field("status")),
    ("POLICY", field("policy")),
    ("PRIORITY", field("priority")),
    ("POLICY SOURCE", field("policy_source")),
]

FAILURE: Sequence[Column] = [
    ("ID", field("id")),
    ("HOST", field("host")),
    ("KIND", field("kind")),
    ("STATUS", field("status")),
    ("COUNT", field("count")),
    ("FIRST SEEN", time_field("first_seen")),
    ("LAST SEEN", time_field("last_seen")),
    ("SOURCES", field("sources")),
    ("REASON", field("reason")),
]

GUEST_FAILURE: Sequence[Column] = [
    ("ID", field("id")),
    ("INSTANCE", field("instance_id")),
    ("HOST", field("host")),
    ("KIND", field("kind")),
    ("STATUS", field("status")),
    ("COUNT", field("count")),
    ("RESTARTS", field("restarts")),
    ("LAST SEEN", time_field("last_seen")),
    ("REASON", field("reason")),
]


def _checks(item: Mapping[str, Any]) -> str:
    return ", ".join(f"{c['name']} {c['health']}" for c in item.get("checks") or []) or "-"


def _episode(key: str) -> Cell:
    return lambda item: text((item.get("episode") or {}).get(key))


APP: Sequence[Column] = [
    ("INSTANCE", field("instance_id")),
    ("HOST", field("host")),
    ("MODE", field("mode")),
    ("CHECKS", _checks),
    ("FAILURE", _episode("status")),
    ("ATTEMPTS", _episode("attempts")),
    ("LAST ACTION", _episode("action")),
    ("REASON", _episode("reason")),
    ("REFUSED", field("error")),
]

APP_CREDENTIAL: Sequence[Column] = [
    ("INSTANCE", field("instance_id")),
    ("HEADER", field("header")),
    ("CREDENTIAL", field("credential")),
]


def _members(item: Mapping[str, Any]) -> str:
    return " ".join(f"{m['name']}@{m['address']}" for m in item.get("members") or [])


CLUSTER: Sequence[Column] = [
    ("ID", field("id")),
    ("NAME", field("name")),
    ("STATUS", field("status")),
    ("SIZE", field("size")),
    ("POLICY", field("policy")),
    ("VIP", field("vip")),
    ("MEMBERS", _members),
    ("DETAIL", field("detail")),
]

CLUSTER_CHECK: Sequence[Column] = [
    ("CHECK", field("name")),
    ("OK", field("ok")),
    ("DETAIL", field("detail")),
]

SERVICE: Sequence[Column] = [
    ("SERVICE", field("name")),
    ("UP", field("up")),
    ("SINCE", time_field("since")),
    ("DETAIL", field("detail")),
]

EVENT: Sequence[Column] = [
    ("SEQ", field("seq")),
    ("TIME", time_field("timestamp")),
    ("TYPE", field("event_type")),
    ("PRIORITY", field("priority")),
    ("HOST", field("host")),
    ("INSTANCE", field("instance_id")),
]

SUBSCRIPTION: Sequence[Column] = [
    ("NAME", field("name")),
    ("URL", field("url")),
    ("EVENT TYPES", Field("event_types", lambda t: ", ".join(t or []) or "all")),
    ("CREATED", time_field("created_at")),
]

DEAD_LETTER: Sequence[Column] = [
    ("SINK", field("sink")),
    ("EVENT SEQ", field("event_seq")),
    ("EVENT", field("event_type")),
    ("ATTEMPTS", field("attempts")),
    ("WHEN", time_field("at")),
    ("ERROR", field("error")),
]

_DONE_STEPS = frozenset({"succeeded", "skipped"})


def _steps_done(recovery: Mapping[str, Any]) -> str:
    steps = recovery.get("steps") or []
    done = sum(1 for s in steps if s.get("status") in _DONE_STEPS)
    return f"{done}/{len(steps)}"


RECOVERY_LIST: Sequence[Column] = [
    ("ID", field("id")),
    ("HOST", field("host")),
    ("SEGMENT", field("segment")),
    ("STATUS", field("status")),
    ("FAILURE", field("failure_id")),
    ("CREATED", time_field("created_at")),
    ("DURATION", lambda r: elapsed(r.get("started_at"), r.get("finished_at"))),
    ("STEPS DONE", _steps_done),
    ("REASON", field("reason")),
]

RECOVERY: Sequence[Column] = [
    ("ID", field("id")),
    ("HOST", field("host")),
    ("SEGMENT", field("segment")),
    ("STATUS", field("status")),
    ("REASON", field("reason")),
    ("FAILURE", field("failure_id")),
    ("CREATED", time_field("created_at")),
    ("STARTED", time_field("started_at")),
    ("FINISHED", time_field("finished_at")),
    ("DURATION", lambda r: elapsed(r.get("started_at"), r.get("finished_at"))),
    ("STEPS DONE", _steps_done),
]


def _step_instance(step: Mapping[str, Any]) -> str:
    name, iid = step.get("instance_name"), step.get("instance_id")
    if name and iid:
        return f"{name} ({iid})"
    return text(name or iid)


STEP: Sequence[Column] = [
    ("SEQ", field("seq")),
    ("KIND", field("kind")),
    ("INSTANCE", _step_instance),
    ("STATUS", field("status")),
    ("ATTEMPTS", field("attempts")),
    ("DURATION", lambda s: elapsed(s.get("started_at"), s.get("finished_at"))),
    ("DETAIL", field("detail")),
]

SEGMENT_OWNERS: Sequence[Column] = [
    ("SEGMENT", field("segment")),
    ("OWNER", lambda o: text(o.get("owner")) + ("" if o.get("live") else " (not live)")),
    ("EPOCH", field("epoch")),
    ("SINCE", time_field("taken_at")),
]

CONTROL: Sequence[Column] = [
    ("PAUSED", field("paused")),
    ("REASON", field("reason")),
    ("CHANGED", time_field("changed_at")),
]
