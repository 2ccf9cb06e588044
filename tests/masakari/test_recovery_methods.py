"""Masakari's recovery methods in vigil: reserved hosts as evacuation targets, tried in
order one attempt each, with no fixed waits — the pure rule and a recovery on the sim."""

from __future__ import annotations

from typing import Any

import pytest
from support import wait_until

from vigil.engine.masakari_rules import evacuation_targets
from vigil.engine.steps import pick_target

from .test_api import DOWN, host, notify, segment
from .vigil_masakari import Running


@pytest.mark.parametrize(
    ("method", "reserved", "expected"),
    [
        ("auto", ["r1"], (None,)),
        ("reserved_host", ["r1", "r2"], ("r1", "r2")),
        ("reserved_host", [], (None,)),  # vigil recovers rather than fail
        ("rh_priority", ["r1"], ("r1", None)),
        ("auto_priority", ["r1"], (None, "r1")),
    ],
)
def test_recovery_method_as_targets(
    method: str, reserved: list[str], expected: tuple[str | None, ...]
) -> None:
    assert evacuation_targets(method, reserved) == expected


def test_one_target_per_attempt_then_the_last() -> None:
    targets = ("r1", "r2", None)
    assert [pick_target(targets, a) for a in (1, 2, 3, 4, 9)] == ["r1", "r2", None, None, None]
    assert pick_target((), 1) is None


def test_reserved_host_segment_evacuates_to_its_reserved_host(vigil: Running) -> None:
    assert vigil.cloud is not None
    with vigil.masakari("1.3") as c:
        seg = segment(c, "spare", recovery_method="reserved_host")
        for name in vigil.cloud.hosts():
            host(c, seg["uuid"], name, reserved=name == "compute-4")
            vigil.api.patch(f"/v1/hosts/{name}", json={"fencing": [{"driver": "sim"}]})
        vigil.cloud.power_loss("compute-2")
        n = notify(c, "compute-2", "COMPUTE_HOST", DOWN).json()["notification"]
        uuid = n["notification_uuid"]

        def finished() -> dict[str, Any] | None:
            shown: dict[str, Any] = c.get(f"/notifications/{uuid}").json()["notification"]
            return shown if shown["status"] in ("finished", "error", "failed") else None

        assert wait_until(finished, "the recovery", 20.0)["status"] == "finished"
        moves = c.get(f"/notifications/{uuid}/vmoves").json()["vmoves"]
    assert moves and {m["dest_host"] for m in moves} == {"compute-4"}
    assert {m["status"] for m in moves} == {"succeeded"}
