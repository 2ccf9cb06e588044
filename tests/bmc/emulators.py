"""Real BMCs for the fencing tests, started and stopped by the tests themselves.

- ``Libvirt``: libvirtd with tiny disk-less QEMU domains (software emulation) that sit in
  the BIOS: real machines whose power a BMC can cut. It starts libvirtd (and virtlogd)
  only if none answers, and stops only what it started. ``/dev/kvm`` is made
  group-``kvm`` 0660 while it runs (else libvirt re-probes QEMU at every domain start,
  seconds each) and restored afterwards; KVM itself is never used.
- ``SushyEmulator``: sushy-tools' Redfish emulator over those domains, on HTTPS with a
  throw-away CA and a bcrypt user file, limited to this run's domains.
- ``VirtualBmc``: vbmcd from virtualbmc, one IPMI (lanplus) BMC per domain.
- ``FakeRedfish``: a small in-process Redfish service for the faults an emulator does not
  have: a BMC that acknowledges ForceOff and leaves the power on, one that answers too
  slowly, Redfish sessions.
- ``LyingIpmiBmc``: an IPMI BMC (pyghmi's server side, in a subprocess) that acknowledges
  power down and keeps reporting power on.
- ``SilentPort``: a UDP/TCP port that takes requests and never answers.

Everything binds to 127.0.0.1; ports are picked free at start.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import fcntl
import grp
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support import wait_until
from support.tls import ThrowawayCa

VENV_BIN = Path(sys.executable).parent
LIBVIRT_URI = "qemu:///system"
HERE = Path(__file__).parent
DOMAIN_PREFIX = "vigil-test-"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (a closed port, until someone binds it)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the test process dies (PR_SET_PDEATHSIG), so
    a killed test run leaves no emulator behind."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End a process this module started (its own process group), by its id."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


# ------------------------------------------------------------------------------ libvirt

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices/>
</domain>
"""


@dataclass
class Domain:
    """A tiny QEMU machine with no disk: it powers on into the BIOS and stays there."""

    name: str
    uuid: str
    libvirt: Libvirt

    def _dom(self) -> Any:
        return self.libvirt.conn().lookupByName(self.name)

    def is_running(self) -> bool:
        return bool(self._dom().isActive())

    def state(self) -> str:
        """libvirt's view: ``running``, ``shut off``... (as ``virsh domstate`` says it)."""
        done = subprocess.run(
            ["virsh", "-c", LIBVIRT_URI, "domstate", self.name],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()

    def start(self) -> None:
        if not self.is_running():
            self._dom().create()

    def destroy(self) -> None:
        if self.is_running():
            self._dom().destroy()


class Libvirt:
    """libvirtd on this machine, shared by every test session that runs at the same time.

    The first session to arrive relaxes ``/dev/kvm`` and starts virtlogd/libvirtd if none
    answers; the last one to leave restores ``/dev/kvm`` and stops the daemons a session
    started. The bookkeeping is a JSON file under a lock (``SHARED``): sessions of several
    developers and CI may overlap on one machine.
    """

    SHARED = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir())

    def __init__(self) -> None:
        self._conn: Any = None
        self.domains: list[Domain] = []
        self._joined = False

    @staticmethod
    def check() -> None:
        """Raises unless libvirt-python, libvirtd and QEMU are installed."""
        import libvirt  # type: ignore[import-untyped]  # noqa: F401

        for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"):
            if not any((Path(d) / tool).exists() for d in ("/usr/sbin", "/usr/bin", "/sbin")):
                raise FileNotFoundError(f"{tool} is not installed (tools/bmc/setup)")

    def conn(self) -> Any:
        import libvirt

        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(LIBVIRT_URI)
        return self._conn

    def _answers(self) -> bool:
        try:
            self.conn().getVersion()
        except Exception:
            self._conn = None
            return False
        return True

    @contextlib.contextmanager
    def _shared(self) -> Iterator[dict[str, Any]]:
        """The sessions' shared state, locked; written back when the block ends."""
        state_file = self.SHARED / "vigil-bmc-tests.json"
        with (self.SHARED / "vigil-bmc-tests.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                state = {}
            state["users"] = [p for p in state.get("users", []) if _pid_alive(p)]
            state.setdefault("kvm", None)
            state.setdefault("started", [])
            yield state
            state_file.write_text(json.dumps(state))

    def start(self) -> None:
        with self._shared() as state:
            if not state["users"]:
                if state["kvm"] is None:  # else: a crashed session left the original
                    state["kvm"] = _relax_kvm()
                if not self._answers():
                    for daemon, pidfile in (
                        ("virtlogd", "/run/virtlogd.pid"),
                        ("libvirtd", "/run/libvirtd.pid"),
                    ):
                        if _read_pid(Path(pidfile)) is None:
                            subprocess.run([daemon, "-d"], check=True, timeout=60)
                            state["started"].append(pidfile)
            state["users"].append(os.getpid())
            self._joined = True
            wait_until(self._answers, "libvirtd to answer", 60, every=0.1, ignoring=(Exception,))
        self._sweep_stale_domains()

    def _sweep_stale_domains(self) -> None:
        """Domains left by a test run that died: named vigil-test-<pid>-..., pid gone."""
        conn = self.conn()
        for name in conn.listDefinedDomains() + [
            conn.lookupByID(i).name() for i in conn.listDomainsID()
        ]:
            if not name.startswith(DOMAIN_PREFIX):
                continue
            pid = name[len(DOMAIN_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                dom = conn.lookupByName(name)
                with contextlib.suppress(Exception):
                    dom.destroy()
                with contextlib.suppress(Exception):
                    dom.undefine()

    def define(self, role: str) -> Domain:
        name = f"{DOMAIN_PREFIX}{os.getpid()}-{role}"
        domain_uuid = str(uuid.uuid4())
        self.conn().defineXML(DOMAIN_XML.format(name=name, uuid=domain_uuid))
        domain = Domain(name, domain_uuid, self)
        self.domains.append(domain)
        return domain

    def stop(self) -> None:
        for domain in self.domains:
            with contextlib.suppress(Exception):
                domain.destroy()
            with contextlib.suppress(Exception):
                domain._dom().undefine()
        self.domains.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if not self._joined:
            return
        self._joined = False
        with self._shared() as state:
            state["users"] = [p for p in state["users"] if p != os.getpid()]
            if state["users"]:
                return
            for pidfile in reversed(state["started"]):
                pid = _read_pid(Path(pidfile))
                if pid is not None:
                    os.kill(pid, signal.SIGTERM)
                    _wait_exit(pid)
            state["started"] = []
            if state["kvm"] is not None:
                _restore_kvm(state["kvm"])
                state["kvm"] = None


def _wait_exit(pid: int, timeout: float = 15.0) -> None:
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: not _pid_alive(pid),
            f"pid {pid} to exit",
            timeout,
            every=0.1,
            ignoring=(Exception,),
        )


def _relax_kvm() -> list[int] | None:
    """Make /dev/kvm group kvm, 0660 (libvirt then stops re-probing QEMU at every domain
    start); return its (mode, gid) before, or None if nothing was changed."""
    kvm = Path("/dev/kvm")
    if not kvm.exists() or os.geteuid() != 0:
        return None
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    st = kvm.stat()
    saved = [st.st_mode & 0o7777, st.st_gid]
    os.chown(kvm, -1, gid)
    os.chmod(kvm, 0o660)
    return saved


def _restore_kvm(saved: list[int]) -> None:
    mode, gid = saved
    os.chown("/dev/kvm", -1, gid)
    os.chmod("/dev/kvm", mode)


# ------------------------------------------------------------------------------- TLS


@dataclass
class Tls:
    ca: Path  # the CA certificate (what a client verifies with)
    cert: Path  # the server's certificate for 127.0.0.1, signed by the CA
    key: Path
    other_ca: Path  # a CA that did not sign it (verification must fail)


def make_tls(directory: Path) -> Tls:
    directory.mkdir(parents=True, exist_ok=True)
    ca = ThrowawayCa(directory, "vigil test BMC CA")
    other = ThrowawayCa(directory, "vigil test other CA")
    cert, key = ca.issue("bmc", dns=["localhost"], ips=["127.0.0.1"])
    key.chmod(0o600)
    return Tls(ca.path, cert, key, other.path)


# ------------------------------------------------------------------------- sushy-tools


class SushyEmulator:
    """sushy-tools' Redfish emulator over libvirt domains, HTTPS, with a user file."""

    def __init__(
        self, workdir: Path, tls: Tls, *, users: dict[str, str], domains: list[Domain]
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.users = users
        self.domains = domains
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def check() -> None:
        if not (VENV_BIN / "sushy-emulator").exists():
            raise FileNotFoundError("sushy-emulator is not installed (tools/bmc/setup)")
        import bcrypt  # noqa: F401

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        import bcrypt

        self.workdir.mkdir(parents=True, exist_ok=True)
        auth = self.workdir / "htpasswd"
        auth.write_text(
            "".join(
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, pw in self.users.items()
            )
        )
        self.port = free_port()
        config = self.workdir / "emulator.conf"
        config.write_text(
            "\n".join(
                [
                    "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
                    f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
                    f"SUSHY_EMULATOR_SSL_CERT = '{self.tls.cert}'",
                    f"SUSHY_EMULATOR_SSL_KEY = '{self.tls.key}'",
                    f"SUSHY_EMULATOR_AUTH_FILE = '{auth}'",
                    f"SUSHY_EMULATOR_LIBVIRT_URI = '{LIBVIRT_URI}'",
                    f"SUSHY_EMULATOR_ALLOWED_INSTANCES = {[d.uuid for d in self.domains]!r}",
                    "SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = True",
                    "",
                ]
            )
        )
        log = (self.workdir / "emulator.log").open("ab")
        self._proc = subprocess.Popen(
            [str(VENV_BIN / "sushy-emulator"), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        wait_until(self._answers, "the Redfish emulator", 60, every=0.2, ignoring=(Exception,))

    def _answers(self) -> bool:
        import requests

        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"sushy-emulator exited {self._proc.returncode}: see {self.workdir}")
        user, password = next(iter(self.users.items()))
        response = requests.get(
            f"{self.url}/redfish/v1/Systems",
            verify=str(self.tls.ca),
            auth=(user, password),
            timeout=2,
        )
        return response.status_code == 200

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None


# ------------------------------------------------------------------------- virtualbmc


class VirtualBmc:
    """vbmcd with one IPMI BMC per domain on 127.0.0.1."""

    def __init__(self, workdir: Path, *, username: str, password: str) -> None:
        self.workdir = workdir
        self.username = username
        self.password = password
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    @staticmethod
    def check() -> None:
        for tool in ("vbmcd", "vbmc"):
            if not (VENV_BIN / tool).exists():
                raise FileNotFoundError(f"{tool} is not installed (tools/bmc/setup)")

    def start(self) -> None:
        (self.workdir / "conf").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "virtualbmc.conf"
        config.write_text(
            "[default]\n"
            f"config_dir = {self.workdir / 'conf'}\n"
            f"pid_file = {self.workdir / 'vbmcd.pid'}\n"
            f"server_port = {free_port()}\n"
            "[log]\n"
            f"logfile = {self.workdir / 'vbmcd.log'}\n"
        )
        self._env = {**os.environ, "VIRTUALBMC_CONFIG": str(config)}
        self._proc = subprocess.Popen(
            [str(VENV_BIN / "vbmcd"), "--foreground"],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        wait_until(
            lambda: self._vbmc("list").returncode == 0,
            "vbmcd",
            30,
            every=0.3,
            ignoring=(Exception,),
        )

    def _vbmc(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"vbmcd exited {self._proc.returncode}: see {self.workdir}")
        return subprocess.run(
            [str(VENV_BIN / "vbmc"), *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add(self, domain: Domain) -> int:
        port = free_port(socket.SOCK_DGRAM)
        for args in (
            (
                "add",
                domain.name,
                "--port",
                str(port),
                "--address",
                "127.0.0.1",
                "--username",
                self.username,
                "--password",
                self.password,
                "--libvirt-uri",
                LIBVIRT_URI,
            ),
            ("start", domain.name),
        ):
            done = self._vbmc(*args)
            if done.returncode != 0:
                raise RuntimeError(f"vbmc {args[0]} failed: {done.stderr.strip()}")
        self.ports[domain.name] = port
        return port

    def stop(self) -> None:
        # vbmcd and its one process per BMC share a process group: ending it ends them all
        # (their configuration lives in the session's temporary directory).
        self.ports.clear()
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None


# --------------------------------------------------------------------- a fake Redfish


@dataclass
class FakeRedfishState:
    users: dict[str, str]
    power: dict[str, str] = field(default_factory=lambda: {"node-1": "On"})
    lies: bool = False  # acknowledge ForceOff, leave the power on
    delay: float = 0.0  # seconds before every answer
    sessions: dict[str, str] = field(default_factory=dict)  # token -> session id
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth kind
    resets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _RedfishHandler(BaseHTTPRequestHandler):
    state: FakeRedfishState

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"code": "Base.1.0.GeneralError", "message": message}})

    def _authorized(self) -> str | None:
        token = self.headers.get("X-Auth-Token")
        if token is not None:
            return "session" if token in self.state.sessions else None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.state.users.get(user) == password:
                return "basic"
        return None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _handle(self, method: str) -> None:
        state = self.state
        if state.delay:
            time.sleep(state.delay)
        path = self.path.rstrip("/")
        body: dict[str, Any] = self._body() if method in ("POST", "PATCH") else {}
        if path in ("/redfish/v1", "/redfish"):
            state.log.append((method, path, "none"))
            return self._send(200, _service_root())
        if method == "POST" and path == "/redfish/v1/SessionService/Sessions":
            user, password = str(body.get("UserName")), body.get("Password")
            if state.users.get(user) != password:
                state.log.append((method, path, "refused"))
                return self._error(401, "login refused")
            token, sid = uuid.uuid4().hex, uuid.uuid4().hex[:8]
            with state.lock:
                state.sessions[token] = sid
            state.log.append((method, path, "login"))
            location = f"/redfish/v1/SessionService/Sessions/{sid}"
            return self._send(
                201,
                {"@odata.id": location, "Id": sid, "UserName": user},
                {"X-Auth-Token": token, "Location": location},
            )
        auth = self._authorized()
        state.log.append((method, path, auth or "refused"))
        if auth is None:
            return self._error(401, "authentication required")
        if method == "DELETE" and path.startswith("/redfish/v1/SessionService/Sessions/"):
            sid = path.rsplit("/", 1)[1]
            with state.lock:
                for token, known in list(state.sessions.items()):
                    if known == sid:
                        del state.sessions[token]
            return self._send(204)
        if method == "GET" and path == "/redfish/v1/SessionService":
            return self._send(200, _session_service())
        if method == "GET" and path == "/redfish/v1/Systems":
            return self._send(200, _systems(sorted(state.power)))
        prefix = "/redfish/v1/Systems/"
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            system, _, action = rest.partition("/")
            if system not in state.power:
                return self._error(404, "no such system")
            if method == "GET" and not action:
                return self._send(200, _system(system, state.power[system]))
            if method == "POST" and action == "Actions/ComputerSystem.Reset":
                reset = str(body.get("ResetType"))
                state.resets.append(reset)
                if reset not in ("On", "ForceOff", "GracefulShutdown", "ForceRestart"):
                    return self._error(400, "unsupported ResetType")
                if not state.lies or reset == "On":
                    state.power[system] = "On" if reset in ("On", "ForceRestart") else "Off"
                return self._send(204)
        return self._error(404, "not found")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


def _service_root() -> dict[str, Any]:
    return {
        "@odata.id": "/redfish/v1/",
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Fake Redfish",
        "RedfishVersion": "1.6.0",
        "UUID": "92384634-2938-2342-8820-489239905423",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
    }


def _session_service() -> dict[str, Any]:
    return {
        "@odata.id": "/redfish/v1/SessionService",
        "Id": "SessionService",
        "ServiceEnabled": True,
        "SessionTimeout": 300,
        "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"},
    }


def _systems(ids: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": "/redfish/v1/Systems",
        "Name": "Systems",
        "Members@odata.count": len(ids),
        "Members": [{"@odata.id": f"/redfish/v1/Systems/{i}"} for i in ids],
    }


def _system(system: str, power: str) -> dict[str, Any]:
    return {
        "@odata.id": f"/redfish/v1/Systems/{system}",
        "@odata.type": "#ComputerSystem.v1_10_0.ComputerSystem",
        "Id": system,
        "Name": system,
        "PowerState": power,
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": f"/redfish/v1/Systems/{system}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": [
                    "On",
                    "ForceOff",
                    "GracefulShutdown",
                    "ForceRestart",
                ],
            }
        },
    }


class FakeRedfish:
    """A Redfish BMC in this process (plain HTTP on 127.0.0.1), for staged faults."""

    def __init__(
        self,
        users: dict[str, str],
        systems: tuple[str, ...] = ("node-1",),
        *,
        tls: Tls | None = None,
    ) -> None:
        self.state = FakeRedfishState(users=dict(users), power={s: "On" for s in systems})
        handler = type("Handler", (_RedfishHandler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls.cert), str(tls.key))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeRedfish:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ----------------------------------------------------------------- a lying IPMI BMC


class LyingIpmiBmc:
    """An IPMI 2.0 BMC (pyghmi's server side) that says "done" to power down and keeps
    reporting power on; run as a subprocess of its own (pyghmi's event loop is global)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LyingIpmiBmc:
        self.port = free_port(socket.SOCK_DGRAM)
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "lying_ipmi_bmc.py"), str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        # the account on standard input: not on the command line
        self._proc.stdin.write(f"{self.username}\n{self.password}\n".encode())
        self._proc.stdin.close()
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError("the lying IPMI BMC did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            _stop_process(self._proc)


# ---------------------------------------------------------------------- a silent port


class SilentPort:
    """A bound port that never answers: UDP swallows datagrams; TCP accepts (into the
    backlog) and never replies. For "the BMC does not answer" timeouts."""

    def __init__(self, kind: int) -> None:
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])

    def __enter__(self) -> SilentPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


@contextlib.contextmanager
def started(*things: Any) -> Iterator[None]:
    """Start each (``start``/``stop``), stop them all in reverse order afterwards."""
    done: list[Any] = []
    try:
        for thing in things:
            done.append(thing)
            thing.start()
        yield
    finally:
        for thing in reversed(done):
            with contextlib.suppress(Exception):
                thing.stop()
