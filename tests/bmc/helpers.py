"""Shared by the fencing tests: the engine's fence step on given devices, and a search for
secrets in everything a run produced."""

from __future__ import annotations

import base64
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from vigil.clock import SystemClock
from vigil.config import RecoverySettings
from vigil.drivers.fencing import FenceDevice
from vigil.engine.steps import StepContext
from vigil.model import Host
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute

HERE = Path(__file__).parent
HOST = Host(name="compute-1", segment="az1")


def step_context(devices: Sequence[FenceDevice], *, confirm_timeout: float = 10.0) -> StepContext:
    """What ``vigil.engine.steps.fence`` needs, on real time; ``devices`` are the levels."""
    return StepContext(
        compute=SimCompute(SimCloud(SystemClock())),  # not used by the fence step
        fence_devices=lambda host: list(devices),
        policies=lambda _ids: {},
        settings=RecoverySettings(fence_confirm_timeout=confirm_timeout, poll_interval=0.2),
        clock=SystemClock(),
        wait=time.sleep,
    )


def secret_forms(username: str, secrets: Iterable[str]) -> list[str]:
    """A secret as it could leak: itself, and inside an HTTP basic Authorization header."""
    forms: list[str] = []
    for secret in secrets:
        forms.append(secret)
        forms.append(base64.b64encode(f"{username}:{secret}".encode()).decode())
    return forms


def exception_texts(exc: BaseException | None) -> list[str]:
    """str and repr of an exception and of every exception chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return texts


def record_texts(records: Iterable[logging.LogRecord]) -> list[str]:
    """Everything a log record could print: its message, its arguments, its traceback."""
    texts: list[str] = []
    for record in records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            texts += exception_texts(record.exc_info[1])
        if record.exc_text:
            texts.append(record.exc_text)
    return texts


def fake_agent(directory: Path) -> Path:
    """``fake_fence_agent.py`` as an executable named like an agent, run by this Python."""
    path = directory / "fence_fake"
    path.write_text(f"#!{sys.executable}\n" + (HERE / "fake_fence_agent.py").read_text())
    path.chmod(0o755)
    return path
