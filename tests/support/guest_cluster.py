"""In-guest Pacemaker clusters for real: each VM of a test is a set of Linux namespaces.

vigil writes cloud-init user data that turns a set of VMs into a corosync 3 + pacemaker 2
cluster. The tests' VMs are simulated, so this harness stands in for them: each member is
a network, mount, UTS and PID namespace on this machine running Debian's real corosync
and pacemakerd (``tools/pacemaker/setup`` installs them), over the files the user data's
``write_files`` would have written in that VM. Its ``runcmd`` (``systemctl enable --now
corosync pacemaker``) is played by ``GuestCluster.start``.

Why each namespace:

* network: a member has its own address (a veth to a bridge in the root namespace that
  holds the gateway address), so corosync's knet (UDP 5405) and the IPaddr2 VIP are real,
  and a test in the root namespace reaches members, the VIP, and is reached by them;
  libqb's IPC sockets are abstract unix sockets, which are per network namespace too.
* PID: pacemakerd refuses to start when it sees another pacemakerd, and a power cut is
  one SIGKILL to the namespace's init, which takes every process of the member with it.
* UTS: the hostname is the member's name, which pacemaker takes as its node name.
* mount: private /run, /dev/shm (libqb's ring buffers), /var/lib/pacemaker,
  /var/lib/corosync and /var/log; /etc and /usr/sbin are overlays on the machine's own,
  as if the VM booted the same image, so a member's /etc/corosync, /etc/vigil and
  /usr/sbin/fence_vigil (pacemaker-fenced looks for agents in /usr/sbin only) are its own
  and the machine's are untouched. /tmp is the machine's: a flag file there is seen by all.

Everything lives under ``<tmp>/<prefix>-guests``, the namespaces are ``<prefix>-<member>``,
the bridge ``<prefix>-br`` and the veths' root ends ``<prefix>-v<i>``; a crashed run's
leftovers with the same prefix are removed when the next one starts. Needs root.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import ipaddress
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml

COROSYNC = "/usr/sbin/corosync"
PACEMAKERD = "/usr/sbin/pacemakerd"
# A clean environment, as systemd gives its units (pacemaker.service reads
# /etc/default/pacemaker, which sets nothing on Debian).
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

# Where a member's files live. "overlay": the machine's directory below, the member's
# writes above (new files can appear where the machine has none, without touching it).
# "fresh": an empty directory of the member's own with the machine's directory skeleton
# (owners and modes: /var/lib/pacemaker/cib is hacluster:haclient 0750). "tmpfs": empty.
OVERLAY, FRESH, TMPFS = "overlay", "fresh", "tmpfs"
MOUNTS: tuple[tuple[str, str], ...] = (
    ("/etc", OVERLAY),
    ("/usr/sbin", OVERLAY),
    ("/var/lib/pacemaker", FRESH),
    ("/var/lib/corosync", FRESH),
    ("/var/log", FRESH),
    ("/run", TMPFS),
    ("/dev/shm", TMPFS),
)
# Of the machine's /var/log only what the cluster writes to is copied as a skeleton.
SKELETON_ONLY = {"/var/log": ("pacemaker", "corosync")}
# What systemd-tmpfiles would make in /run at boot (resource-agents' tmpfiles.d).
RUN_DIRS = (("/run/resource-agents", 0o1755), ("/run/lock", 0o1777))

# The member's PID 1: reaps the orphans that a real init would (pacemaker's daemons and
# the agents they run), and holds the namespaces while the member lives.
REAPER = (
    "import os, time\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.2)\n"
)


@dataclass(frozen=True)
class WriteFile:
    """One entry of cloud-init's ``write_files``: what it would write in the VM."""

    path: str
    content: bytes
    permissions: int = 0o644
    owner: str = "root:root"


@dataclass(frozen=True)
class Member:
    """One simulated VM: its name (hostname and pacemaker node name), its address in the
    cluster's subnet, and the files its user data writes."""

    name: str
    address: str
    files: list[WriteFile] = field(default_factory=list)


def write_files_of(cloud_config_text: str) -> list[WriteFile]:
    """The ``write_files`` of a ``#cloud-config`` document, decoded as cloud-init would:
    ``encoding: b64`` content is base64, ``permissions`` an octal string (or a YAML
    integer), ``owner`` ``user[:group]``, defaults 0644 and root:root. Anything this
    harness would silently get wrong (another encoding, ``source``, ``append``) raises."""
    if not cloud_config_text.startswith("#cloud-config"):
        raise ValueError("not a cloud-config document: it must start with '#cloud-config'")
    document = yaml.safe_load(cloud_config_text)
    if not isinstance(document, dict):
        raise ValueError("a cloud-config document must be a mapping")
    files: list[WriteFile] = []
    for entry in document.get("write_files") or []:
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"write_files entry without a path: {entry!r}")
        unknown = set(entry) - {"path", "content", "permissions", "owner", "encoding", "defer"}
        if unknown:
            raise ValueError(f"{entry['path']}: write_files keys not supported: {unknown}")
        raw = entry.get("content", "")
        encoding = entry.get("encoding")
        if encoding in ("b64", "base64"):
            content = base64.b64decode(raw)
        elif encoding is None:
            content = raw.encode() if isinstance(raw, str) else bytes(raw)
        else:
            raise ValueError(f"{entry['path']}: encoding {encoding!r} not supported")
        perms = entry.get("permissions", "0644")
        files.append(
            WriteFile(
                path=str(entry["path"]),
                content=content,
                permissions=perms if isinstance(perms, int) else int(str(perms), 8),
                owner=str(entry.get("owner", "root:root")),
            )
        )
    return files


def check_can_run() -> None:
    """Raise (with the reason) if this machine cannot run guest clusters: for a test's
    ``services.require("pacemaker in namespaces", check_can_run)``."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (namespaces, mounts, a bridge)")
    for tool in (COROSYNC, PACEMAKERD, "/usr/sbin/crm_mon", "/usr/bin/nsenter", "/usr/sbin/ip"):
        if not os.access(tool, os.X_OK):
            raise RuntimeError(f"{tool} is missing: run tools/pacemaker/setup")
    if not Path("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists():
        raise RuntimeError("resource-agents is missing: run tools/pacemaker/setup")
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise RuntimeError("the kernel has no overlay filesystem")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _ids(owner: str) -> tuple[int, int]:
    """uid and gid of ``user[:group]``; cloud-init leaves the group alone (root's) when
    only a user is named."""
    user, _, group = owner.partition(":")
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid if group else 0


def _copy_skeleton(src: Path, dst: Path, only: Sequence[str] | None = None) -> None:
    """Make ``dst`` a copy of ``src``'s directories (not files), owners and modes kept."""
    st = src.stat()
    dst.mkdir(parents=True, exist_ok=True)
    os.chown(dst, st.st_uid, st.st_gid)
    dst.chmod(st.st_mode & 0o7777)
    for child in sorted(src.iterdir()) if src.is_dir() else []:
        if (only is None or child.name in only) and child.is_dir() and not child.is_symlink():
            _copy_skeleton(child, dst / child.name)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Guest:
    """One member's host-side state: its directories, its namespaces' init, its daemons."""

    def __init__(self, member: Member, index: int, root: Path, prefix: str) -> None:
        self.member = member
        self.netns = f"{prefix}-{member.name}"
        self.veth = f"{prefix}-v{index}"
        self.dir = root / member.name
        self.init: subprocess.Popen[bytes] | None = None  # unshare, in the root namespace
        self.pid1 = 0  # the member's PID 1, as the root namespace sees it
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.alive = False

    def host_dir(self, guest_dir: str, kind: str) -> Path:
        """Where the member's ``guest_dir`` is kept on the machine (an overlay's upper)."""
        return self.dir / (
            guest_dir.strip("/").replace("/", "-") + ("-upper" if kind == OVERLAY else "")
        )

    def host_path(self, guest_path: str) -> Path:
        """The file on the machine that is ``guest_path`` in the member."""
        path = os.path.normpath(guest_path)
        best = max(
            (m for m in MOUNTS if path == m[0] or path.startswith(m[0] + "/")),
            key=lambda m: len(m[0]),
            default=None,
        )
        if best is None or best[1] == TMPFS:
            raise ValueError(
                f"{self.member.name}: {guest_path} is outside what this harness gives a member "
                f"its own of: {', '.join(m for m, k in MOUNTS if k != TMPFS)}"
            )
        return self.host_dir(best[0], best[1]) / os.path.relpath(path, best[0])


class GuestCluster:
    """The members of one in-guest cluster, each in namespaces of its own (see the module).

    Use as a context manager: entering builds the network and the members' namespaces
    and writes their files; leaving kills every member and removes everything, also after
    a failure. ``start()`` then plays the user data's ``systemctl enable --now corosync
    pacemaker``."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        prefix: str = "vgc",
        subnet: str = "10.77.0.0/24",
        gateway: str = "10.77.0.1",
    ) -> None:
        if len(prefix) > 10 or not prefix.replace("-", "").isalnum():
            raise ValueError("prefix: at most 10 letters, digits or '-' (interface names)")
        self.prefix = prefix
        self.network = ipaddress.ip_network(subnet)
        self.gateway = gateway
        self.bridge = f"{prefix}-br"
        self.root = Path(tempfile.gettempdir()) / f"{prefix}-guests"
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must differ: {names}")
        for m in members:
            if ipaddress.ip_address(m.address) not in self.network:
                raise ValueError(f"{m.name}: {m.address} is not in {subnet}")
        self.guests = {m.name: _Guest(m, i, self.root, prefix) for i, m in enumerate(members)}

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> GuestCluster:
        self.cleanup()
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Kill every process in this prefix's namespaces, delete the namespaces, the
        bridge and veths, and the members' directories: this run's, or a crashed run's."""
        for guest in self.guests.values():
            if guest.pid1:
                self._kill_pid1(guest)
        netns_dir = Path("/run/netns")
        leftovers = sorted(netns_dir.glob(f"{self.prefix}-*")) if netns_dir.is_dir() else []
        for ns in leftovers:
            # Every process whose network namespace this is: the members' inits among them,
            # and killing a PID namespace's init kills all of that namespace.
            pids = _sh("ip", "netns", "pids", ns.name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh("ip", "netns", "delete", ns.name, check=False)
        links = _sh("ip", "-o", "link", "show").stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(f"{self.prefix}-"):
                _sh("ip", "link", "delete", name, check=False)
        for guest in self.guests.values():
            for proc in [*guest.daemons, *([guest.init] if guest.init else [])]:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                if proc.stdout is not None:
                    proc.stdout.close()
            guest.daemons, guest.init, guest.pid1, guest.alive = [], None, 0, False
        shutil.rmtree(self.root, ignore_errors=True)

    def _build(self) -> None:
        prefixlen = self.network.prefixlen
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.gateway}/{prefixlen}", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        self.root.mkdir(mode=0o755)
        for guest in self.guests.values():
            ns = guest.netns
            _sh("ip", "netns", "add", ns)
            _sh(
                "ip", "link", "add", guest.veth, "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            _sh("ip", "link", "set", guest.veth, "master", self.bridge)
            _sh("ip", "link", "set", guest.veth, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{guest.member.address}/{prefixlen}", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            # No default route: a member reaches its subnet (the gateway address is the
            # test's) and nothing else, so nothing it sends can leave the machine.
            self._prepare_dirs(guest)
            for f in guest.member.files:
                self._write(guest, f)
            self._start_init(guest)

    def _prepare_dirs(self, guest: _Guest) -> None:
        for guest_dir, kind in MOUNTS:
            host = guest.host_dir(guest_dir, kind)
            if kind == OVERLAY:
                host.mkdir(parents=True)
                (guest.dir / (host.name.removesuffix("-upper") + "-work")).mkdir()
            elif kind == FRESH:
                _copy_skeleton(Path(guest_dir), host, SKELETON_ONLY.get(guest_dir))

    def _write(self, guest: _Guest, f: WriteFile) -> None:
        """Write ``f`` as cloud-init would: missing parents made root 0755, then the file
        with its content, owner and permissions."""
        target = guest.host_path(f.path)
        missing = [p for p in reversed(target.parents) if not p.exists()]
        for parent in missing:
            parent.mkdir(mode=0o755)
        target.write_bytes(f.content)
        uid, gid = _ids(f.owner)
        os.chown(target, uid, gid)
        target.chmod(f.permissions)

    def _start_init(self, guest: _Guest) -> None:
        """The member's PID 1 in new mount, UTS and PID namespaces inside its network
        namespace, after it has mounted the member's directories over the machine's."""
        steps = [f"hostname {shlex.quote(guest.member.name)}"]
        for guest_dir, kind in MOUNTS:
            host = guest.host_dir(guest_dir, kind)
            if kind == OVERLAY:
                work = guest.dir / (host.name.removesuffix("-upper") + "-work")
                opts = f"lowerdir={guest_dir},upperdir={host},workdir={work}"
                steps.append(f"mount -t overlay overlay -o {shlex.quote(opts)} {guest_dir}")
            elif kind == FRESH:
                steps.append(f"mount --bind {shlex.quote(str(host))} {guest_dir}")
            else:
                steps.append(f"mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs {guest_dir}")
        steps.append("chmod 1777 /dev/shm")
        steps += [f"mkdir -p -m {mode:o} {path}" for path, mode in RUN_DIRS]
        # /sys as this network namespace shows it (IPaddr2 and ip look at its interfaces).
        steps.append("mount -t sysfs sysfs /sys")
        steps.append("echo READY")
        steps.append(f"exec /usr/bin/python3 -c {shlex.quote(REAPER)}")
        script = "set -e\n" + "\n".join(steps)
        err = open(guest.dir / "init.err", "wb")  # noqa: SIM115 - the child keeps it
        with err:
            guest.init = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{guest.netns}",
                    "--",
                    "unshare",
                    "--mount",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    "--kill-child",
                    "--",
                    "/bin/sh",
                    "-c",
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert guest.init.stdout is not None
        line = guest.init.stdout.readline()
        if line.strip() != b"READY":
            raise RuntimeError(
                f"{guest.member.name}: its namespaces did not come up: "
                f"{(guest.dir / 'init.err').read_text(errors='replace')}"
            )
        children = Path(f"/proc/{guest.init.pid}/task/{guest.init.pid}/children").read_text()
        guest.pid1 = int(children.split()[0])
        guest.alive = True

    def _kill_pid1(self, guest: _Guest) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(guest.pid1, signal.SIGKILL)

    # -- what a test does --------------------------------------------------------------

    def start(self) -> None:
        """``systemctl enable --now corosync pacemaker`` in every member: corosync in the
        foreground, then, once it answers (systemd waits for corosync's readiness
        notification before pacemaker.service), pacemakerd. Returns without waiting for
        the cluster: see ``wait_for_quorum``."""
        for guest in self.guests.values():
            self._daemon(guest, "corosync", [COROSYNC, "-f"])
        for guest in self.guests.values():
            self._wait_corosync(guest, timeout=15)
            self._daemon(guest, "pacemakerd", [PACEMAKERD])

    def _daemon(self, guest: _Guest, name: str, argv: list[str]) -> None:
        """A daemon under the member's PID namespace, its output (the journal's) in
        ``<member dir>/<name>.out``."""
        out = open(guest.dir / f"{name}.out", "ab")  # noqa: SIM115 - the child keeps it
        with out:
            guest.daemons.append(
                subprocess.Popen(
                    [*self._enter(guest), *argv],
                    env=DAEMON_ENV,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def _wait_corosync(self, guest: _Guest, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(guest.member.name, ["corosync-cfgtool", "-s"], timeout=5)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{guest.member.name}: corosync did not come up in {timeout:g}s: "
                    f"{result.stdout}{result.stderr}\n{self.log(guest.member.name)}"
                )
            time.sleep(0.05)

    def _enter(self, guest: _Guest, user: str | None = None) -> list[str]:
        if not guest.alive:
            raise RuntimeError(f"{guest.member.name} is not running (power cut?)")
        argv = ["nsenter", "-t", str(guest.pid1), "-n", "-m", "-u", "-p", "--wd=/", "--"]
        if user is not None:
            group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
            argv += ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
        return argv

    def run(
        self, member: str, argv: Sequence[str], *, timeout: float, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``member``'s namespaces (as root, or as ``user``: its primary
        group, and its supplementary groups), its output captured as text; not checked."""
        guest = self._guest(member)
        env = dict(DAEMON_ENV)
        if user is not None:
            env["HOME"] = pwd.getpwnam(user).pw_dir
        return subprocess.run(
            [*self._enter(guest, user), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def crm_mon(self, member: str) -> ET.Element | None:
        """``crm_mon -1 --output-as=xml`` in ``member``, parsed; None if it failed."""
        try:
            result = self.run(member, ["crm_mon", "-1", "--output-as=xml"], timeout=10)
            return ET.fromstring(result.stdout)
        except (ET.ParseError, subprocess.TimeoutExpired):
            return None

    def _quorate_view(self, member: str) -> tuple[bool, str]:
        """Whether ``member`` sees a DC, quorum and every live member online; and why not."""
        try:
            result = self.run(member, ["crm_mon", "-1", "--output-as=xml"], timeout=10)
        except subprocess.TimeoutExpired:
            return False, "crm_mon did not answer in 10s"
        try:
            doc = ET.fromstring(result.stdout)
        except ET.ParseError:
            return False, f"{result.returncode}: {result.stdout}{result.stderr}"
        dc = doc.find("summary/current_dc")
        online = {n.get("name") for n in doc.iterfind("nodes/node") if n.get("online") == "true"}
        live = {g.member.name for g in self.guests.values() if g.alive}
        ok = (
            dc is not None
            and dc.get("present") == "true"
            and dc.get("with_quorum") == "true"
            and live <= online
        )
        return ok, result.stdout

    def wait_for_quorum(self, timeout: float = 60) -> None:
        """Until every live member reports a partition with quorum, a DC, and all live
        members online. On timeout raises with each member's last ``crm_mon`` output."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while True:
            done = True
            for guest in self.guests.values():
                if guest.alive:
                    ok, last[guest.member.name] = self._quorate_view(guest.member.name)
                    done = done and ok
            if done:
                return
            if time.monotonic() > deadline:
                views = "\n".join(f"--- {name}:\n{out}" for name, out in last.items())
                raise AssertionError(f"no quorum with all live members in {timeout:g}s\n{views}")
            time.sleep(0.2)

    def resource_node(self, resource_id: str) -> str | None:
        """The member pacemaker runs ``resource_id`` on, as the first live member that
        answers sees it; None if it runs nowhere. A resource of a member that died stays
        on it (pacemaker's view) until that member is fenced."""
        for guest in self.guests.values():
            if not guest.alive:
                continue
            doc = self.crm_mon(guest.member.name)
            if doc is None:
                continue
            for res in doc.iter("resource"):
                if res.get("id") == resource_id and res.get("active") == "true":
                    node = res.find("node")
                    return None if node is None else node.get("name")
            return None
        return None

    def power_cut(self, member: str) -> None:
        """The VM dies with its hypervisor: its link goes down and every process of it is
        SIGKILLed (its PID namespace's init, which takes the whole namespace), nothing
        said to the others. It stays dead; its files and logs stay for ``log``."""
        guest = self._guest(member)
        _sh("ip", "link", "set", guest.veth, "down")
        self._kill_pid1(guest)
        guest.alive = False
        for proc in guest.daemons:
            proc.wait(10)

    def log(self, member: str, lines: int = 60) -> str:
        """The tail of ``member``'s logs (pacemaker.log, corosync's log, and the daemons'
        own output), for assertion messages; readable after a power cut too."""
        guest = self._guest(member)
        var_log = guest.host_dir("/var/log", FRESH)
        parts = []
        for path in (
            var_log / "pacemaker" / "pacemaker.log",
            var_log / "corosync" / "corosync.log",
            guest.dir / "corosync.out",
            guest.dir / "pacemakerd.out",
            guest.dir / "init.err",
        ):
            text = _tail(path, lines)
            if text:
                parts.append(f"--- {member}: {path.name}\n{text}")
        return "\n".join(parts)

    def _guest(self, member: str) -> _Guest:
        try:
            return self.guests[member]
        except KeyError:
            raise KeyError(f"no member {member!r}: {sorted(self.guests)}") from None
