"""The ``fence-agent`` fence driver: any ClusterLabs fence agent (``fence_ipmilan``,
``fence_redfish``, ``fence_idrac``, ``fence_ilo*``, ``fence_apc``, ``fence_virsh``, cloud
agents...), run the way Pacemaker's fencer runs them — so vigil can fence every device
Pacemaker can.

Each operation runs the agent once with no arguments and its options on standard input,
one ``name=value`` per line, ``action=off|on|status`` first: nothing is on the command
line (where ``ps`` would show a password) nor in the environment. Exit codes: ``off`` and
``on`` succeed with 0 (the agents wait until the status read-back agrees); ``status``
exits 0 for on, 2 for off, anything else is an error.

Options: ``agent`` (required) — the agent's name (``fence_*``, found on PATH or in
/usr/sbin, /sbin) or an absolute path; ``agent_timeout`` — seconds one run may take
before it is killed (default 60; keep it above the agent's own ``power_timeout`` +
``login_timeout``); ``password_file`` — a file whose first line is given to the agent as
``password``. Every other option goes to the agent as it is (``ip``, ``ipport``,
``username``, ``password``, ``lanplus``, ``ssl_insecure``, ``plug``, ``power_timeout``...);
``action`` is vigil's. When a device is built the agent's metadata (``-o metadata``) is
read once, and an option it does not know is refused (the agents would log it, value and
all, and carry on without it).

Errors: a timeout, or an agent failing to reach or to move the device, is TemporaryError;
an agent that is missing or refuses its options, or a refused login ("Unable to
connect/login"), is PermanentError. The agent's output is scrubbed of every secret
option's value before it appears in a message or a log line.

Limits: the agent's own messages are summarised (its last ERROR line); one agent process
per operation, so a status poll costs one agent start (~0.1 s for the Python agents).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.fence_options import (
    Option,
    Secret,
    check_options,
    check_secret_source,
    is_option_name,
    is_secret_name,
    option_number,
    read_secret,
    scrub,
)
from vigil.drivers.fencing import FenceDevice, PowerState

LOG = logging.getLogger(__name__)

DRIVER = "fence-agent"
OPTIONS = (
    Option("agent", "fence agent name (fence_*) or absolute path", required=True),
    Option("agent_timeout", "seconds one run of the agent may take (default 60)", kind="number"),
    Option("password_file", "file whose first line is passed as password", kind="path"),
)
OWN_OPTIONS = frozenset(o.name for o in OPTIONS)
RESERVED = frozenset({"action", "nodename"})
DEFAULT_TIMEOUT = 60.0
METADATA_TIMEOUT = 15.0
SEARCH_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_AGENT_NAME = re.compile(r"^fence_[A-Za-z0-9_]+$")
_ERROR_LINE = re.compile(r"^(?:\S+ \S+ )?(?:ERROR|CRITICAL):\s*(.*)$")

# Phrases of the fencing library's failures that retrying will not fix.
PERMANENT_PHRASES = (
    ("unable to connect/login", "the device refused the login: check username and password"),
    ("you have to set login password", "the agent needs a password"),
    ("you have to enter", "the agent misses a required option"),
    ("unrecognised action", "the agent does not support this action"),
    ("does not have the correct privileges", "the account lacks the privilege"),
    ("failed: invalid", "the agent refused an option"),
)


def validate(options: Mapping[str, str]) -> list[str]:
    """Problems found without running anything: the agent is looked at when built."""
    problems = check_options(DRIVER, OPTIONS, options, extra_allowed=True)
    problems += check_secret_source(DRIVER, options, "password", required=False)
    agent = options.get("agent", "")
    if agent and not (_AGENT_NAME.match(agent) or agent.startswith("/")):
        problems.append(f"{DRIVER}: option agent must be a fence_* name or an absolute path")
    for name, value in options.items():
        if name in RESERVED:
            problems.append(f"{DRIVER}: option {name} is set by vigil, not by the configuration")
        elif not is_option_name(name):
            problems.append(f"{DRIVER}: option names are lower-case words (a-z, 0-9, _)")
        elif any(c in value for c in "\r\n\0"):
            problems.append(f"{DRIVER}: option {name} must be one line")
    return problems


def find_agent(agent: str) -> str | None:
    """The executable's path, or None."""
    if agent.startswith("/"):
        return agent if os.access(agent, os.X_OK) and Path(agent).is_file() else None
    path = os.pathsep.join([os.environ.get("PATH", ""), *SEARCH_PATH])
    return shutil.which(agent, path=path)


_METADATA: dict[tuple[str, float], frozenset[str]] = {}
_METADATA_LOCK = threading.Lock()


def agent_parameters(path: str) -> frozenset[str]:
    """The option names an agent accepts (from its metadata), cached per file version."""
    key = (path, Path(path).stat().st_mtime)
    with _METADATA_LOCK:
        if key in _METADATA:
            return _METADATA[key]
    try:
        done = subprocess.run(
            [path, "-o", "metadata"],
            capture_output=True,
            timeout=METADATA_TIMEOUT,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        root = ET.fromstring(done.stdout)
    except (OSError, subprocess.SubprocessError, ET.ParseError) as exc:
        raise PermanentError(
            f"{DRIVER}: {Path(path).name} gives no metadata ({type(exc).__name__})"
        ) from None
    names = frozenset(
        str(p.get("name")).replace("-", "_") for p in root.iter("parameter") if p.get("name")
    )
    with _METADATA_LOCK:
        _METADATA[key] = names
    return names


def build(host: str, options: Mapping[str, str]) -> FenceAgentDevice:
    """A device from ``options``: validated, the agent found and its metadata checked."""
    problems = validate(options)
    if problems:
        raise PermanentError(f"host {host}: {problems[0]}")
    agent = options["agent"]
    path = find_agent(agent)
    if path is None:
        raise PermanentError(f"host {host}: {DRIVER}: agent {agent} not found or not executable")
    known = agent_parameters(path)
    passed = {k: v for k, v in options.items() if k not in OWN_OPTIONS}
    unknown = sorted(k for k in passed if k not in known)
    if unknown:
        raise PermanentError(
            f"host {host}: {DRIVER}: {Path(path).name} has no option {', '.join(unknown)}"
        )
    secrets: list[Secret] = [Secret(v) for k, v in passed.items() if is_secret_name(k) and v]
    password = read_secret(DRIVER, options, "password", required=False)
    arguments: list[tuple[str, str | Secret]] = [
        (k, Secret(v) if is_secret_name(k) else v) for k, v in passed.items()
    ]
    if "password_file" in options and password is not None:
        arguments.append(("password", password))
        secrets.append(password)
    return FenceAgentDevice(
        path=path,
        arguments=arguments,
        secrets=secrets,
        timeout=option_number(options, "agent_timeout", DEFAULT_TIMEOUT),
        description=_describe(Path(path).name, passed),
    )


def _describe(agent: str, options: Mapping[str, str]) -> str:
    where = options.get("ip") or options.get("ipaddr") or ""
    if where and options.get("ipport"):
        where += f":{options['ipport']}"
    plug = options.get("plug") or options.get("port") or ""
    text = f"{DRIVER} {agent}"
    if where:
        text += f" {where}"
    if plug:
        text += f" plug {plug}"
    return text


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([env.get("PATH", "/usr/bin:/bin"), *SEARCH_PATH])
    env["PYTHONWARNINGS"] = "ignore"  # Debian's agents warn about deprecated modules
    return env


class FenceAgentDevice(FenceDevice):
    """One ClusterLabs fence agent with its options; each operation is one agent run."""

    def __init__(
        self,
        *,
        path: str,
        arguments: Sequence[tuple[str, str | Secret]],
        secrets: Sequence[Secret] = (),
        timeout: float = DEFAULT_TIMEOUT,
        description: str = "",
    ) -> None:
        self.path = path
        self._arguments = list(arguments)
        self._secrets = list(secrets)
        self._timeout = timeout
        self.description = description or f"{DRIVER} {Path(path).name}"

    def power_off(self) -> None:
        code, output = self._run("off")
        if code != 0:
            raise self._failure("power off", code, output)

    def power_on(self) -> None:
        code, output = self._run("on")
        if code != 0:
            raise self._failure("power on", code, output)

    def power_status(self) -> PowerState:
        code, output = self._run("status")
        if code == 0:
            return PowerState.ON
        if code == 2:
            return PowerState.OFF
        raise self._failure("read the power state", code, output)

    # ------------------------------------------------------------------------ internals

    def _stdin(self, action: str) -> bytes:
        lines = [f"action={action}"]
        for name, value in self._arguments:
            text = value.reveal() if isinstance(value, Secret) else value
            lines.append(f"{name}={text}")
        return ("\n".join(lines) + "\n").encode()

    def _run(self, action: str) -> tuple[int, str]:
        """Run the agent once; (exit code, its scrubbed output)."""
        try:
            proc = subprocess.Popen(
                [self.path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_environment(),
                start_new_session=True,  # its own process group, killed whole on a timeout
                close_fds=True,
            )
        except OSError as exc:
            raise PermanentError(
                f"{self.description}: cannot run the agent: {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            out, err = proc.communicate(self._stdin(action), timeout=self._timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise TemporaryError(
                f"{self.description}: {action} did not finish within {self._timeout:g}s "
                "(agent killed)"
            ) from None
        output = scrub(
            out.decode(errors="replace") + "\n" + err.decode(errors="replace"), self._secrets
        )
        LOG.debug(
            "%s: %s exited %d: %s", self.description, action, proc.returncode, _last_error(output)
        )
        return proc.returncode, output

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created for this run only
        proc.communicate()

    def _failure(self, what: str, code: int, output: str) -> PermanentError | TemporaryError:
        error = _last_error(output)
        lowered = error.lower()
        for phrase, meaning in PERMANENT_PHRASES:
            if phrase in lowered:
                return PermanentError(
                    f"{self.description}: cannot {what}: {meaning} (agent: {error})"
                )
        detail = f": {error}" if error else ""
        return TemporaryError(f"{self.description}: cannot {what}: agent exited {code}{detail}")


def _last_error(output: str) -> str:
    """The agent's last ERROR line without its timestamp, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match and not match.group(1).startswith("Please use '-h'"):
            return match.group(1)[:300]
    return lines[-1][:300] if lines else ""
