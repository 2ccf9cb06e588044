"""What the fence drivers share: option specifications, their checks, and secret handling.

A fencing level is a driver name and a flat ``{name: text}`` map of options (as a
Pacemaker stonith resource has). Each driver declares its options here as ``Option``
specs; ``check_options`` turns a map into a list of problems, each naming the option and
never its value, so a bad configuration is refused when it is created rather than when a
host has to be fenced.

Secrets (passwords, keys) are held in ``Secret`` objects whose ``str`` and ``repr`` are
``***``, and ``scrub`` removes their values from any text taken from a library or a
subprocess before it reaches a log line or an exception. Limits: ``scrub`` finds the
secret's exact text only (not an encoding of it), so nothing here puts a secret into a
URL, a command line or an environment variable in the first place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil.drivers.errors import PermanentError

#: Words that make an option name a secret. The API masks option values whose names contain
#: one of these: every secret option of vigil's own drivers
#: contains one. ``is_secret_name`` also knows fence agents' ``hexadecimal_kg`` (an IPMI key).
SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential")
SECRET_NAME_PARTS = frozenset({"kg"})

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def is_secret_name(name: str) -> bool:
    """True if an option of this name holds a secret (its value is never shown)."""
    lowered = name.lower()
    if any(word in lowered for word in SECRET_WORDS):
        return True
    return any(part in SECRET_NAME_PARTS for part in re.split(r"[^a-z0-9]+", lowered))


class Secret:
    """A secret string that does not show itself: ``str``/``repr`` give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def scrub(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """``text`` with every secret's value replaced by ``***``."""
    values = sorted(
        {s.reveal() if isinstance(s, Secret) else s for s in secrets if s},
        key=len,
        reverse=True,
    )
    for value in values:
        if value:
            text = text.replace(value, "***")
    return text


@dataclass(frozen=True)
class Option:
    """One option of a fence driver."""

    name: str
    help: str
    kind: str = "text"  # text | bool | number | port | choice | path
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float = 0.0  # numbers: exclusive lower bound

    @property
    def secret(self) -> bool:
        return is_secret_name(self.name)


def parse_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    return None


def parse_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _check_value(driver: str, spec: Option, value: str) -> str | None:
    where = f"{driver}: option {spec.name}"
    if spec.kind == "bool" and parse_bool(value) is None:
        return f"{where} must be true or false"
    if spec.kind == "number":
        number = parse_number(value)
        if number is None or number <= spec.minimum:
            return f"{where} must be a number greater than {spec.minimum:g}"
    if spec.kind == "port" and not (value.isdigit() and 0 < int(value) < 65536):
        return f"{where} must be a TCP/UDP port number (1-65535)"
    if spec.kind == "choice" and value not in spec.choices:
        return f"{where} must be one of {', '.join(spec.choices)}"
    if spec.kind == "path" and not value.startswith("/"):
        return f"{where} must be an absolute path"
    if spec.kind == "text" and not spec.secret and any(c in value for c in "\r\n\0"):
        return f"{where} must be one line"
    return None


def check_options(
    driver: str,
    specs: Sequence[Option],
    options: Mapping[str, str],
    *,
    extra_allowed: bool = False,
) -> list[str]:
    """Problems with ``options`` against ``specs``: unknown names (unless ``extra_allowed``),
    missing required options, values of the wrong form. Never quotes a value."""
    by_name = {s.name: s for s in specs}
    problems: list[str] = []
    for name in options:
        if name not in by_name and not extra_allowed:
            known = ", ".join(sorted(by_name))
            problems.append(f"{driver}: unknown option {name!r} (known: {known})")
    for spec in specs:
        value = options.get(spec.name)
        if value is None:
            if spec.required:
                problems.append(f"{driver}: option {spec.name} is required")
            continue
        if value == "" and spec.required:
            problems.append(f"{driver}: option {spec.name} must not be empty")
            continue
        if value == "":
            continue
        problem = _check_value(driver, spec, value)
        if problem:
            problems.append(problem)
    return problems


def check_secret_source(
    driver: str, options: Mapping[str, str], name: str, *, required: bool
) -> list[str]:
    """A secret is given either inline (``name``) or as a file (``name_file``), not both."""
    inline, file = name in options, f"{name}_file" in options
    if inline and file:
        return [f"{driver}: give {name} or {name}_file, not both"]
    if required and not inline and not file:
        return [f"{driver}: option {name} (or {name}_file) is required"]
    return []


def read_secret(
    driver: str, options: Mapping[str, str], name: str, *, required: bool
) -> Secret | None:
    """The secret of option ``name`` or the first line of the file ``name_file``.

    The file is read at every build of the device, so a rotated password is picked up
    without a restart. Errors name the option, never the value or the file's path.
    """
    if name in options:
        return Secret(options[name])
    file_option = f"{name}_file"
    path = options.get(file_option)
    if path is None:
        if required:
            raise PermanentError(f"{driver}: option {name} (or {file_option}) is required")
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PermanentError(
            f"{driver}: cannot read the file of option {file_option}: {reason}"
        ) from None
    lines = text.splitlines()
    value = lines[0] if lines else ""
    if not value and required:
        raise PermanentError(f"{driver}: the file of option {file_option} is empty")
    return Secret(value)


def option_bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    value = options.get(name, "")
    parsed = parse_bool(value) if value else None
    return default if parsed is None else parsed


def option_number(options: Mapping[str, str], name: str, default: float) -> float:
    value = options.get(name, "")
    parsed = parse_number(value) if value else None
    return default if parsed is None or parsed <= 0 else parsed


def is_option_name(name: str) -> bool:
    return bool(_NAME.match(name))
