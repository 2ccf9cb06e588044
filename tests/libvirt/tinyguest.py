"""A tiny real guest for the libvirt tests: a Debian kernel and a busybox initramfs.

``build_guest(workdir)`` extracts ``vmlinuz`` and the watchdog/panic modules from the
kernel package ``tools/libvirt/setup`` downloaded (``$VIGIL_GUEST_CACHE``, default
``~/.cache/vigil-guest``) and packs an initramfs (~1 MB) whose ``/init`` reads
``vigil_mode=`` from the kernel command line:

- ``idle``: do nothing, forever (a healthy guest);
- ``hang``: start busybox ``watchdog`` on the i6300esb, then kill it with SIGKILL (no
  magic close; the module is loaded with ``nowayout=1`` anyway): the watchdog fires ~5 s
  later, as it would for a hung kernel;
- ``panic``: ``echo c > /proc/sysrq-trigger``; QEMU's ISA pvpanic device tells libvirt;
- ``poweroff``: a clean shutdown from inside (``poweroff -f``).

With ``guest_agent=True`` (``initrd-ga.gz``) the initramfs also carries the real QEMU
guest agent — Debian's ``qemu-guest-agent`` package (downloaded by tools/libvirt/setup),
its ``qemu-ga`` and the shared libraries it needs, copied from this machine (the same
Debian) — and the virtio modules of its channel. ``/init`` then brings ``lo`` up, starts
busybox's ``httpd`` on 127.0.0.1:8080 (a service to check and kill; ``/www/index.html``
says ``vigil-guest ok``) and ``qemu-ga`` on the ``org.qemu.guest_agent.0`` port (found
by name in sysfs: there is no udev to make the /dev/virtio-ports link).
``domain_xml(guest_agent=True)`` adds the channel.

``domain_xml`` describes it for libvirt: software emulation (``type='qemu'``; KVM is not
usable on these machines), direct kernel boot, 192 MiB, no disk, a serial log.
The guest boots to ``/init`` in about 11 s.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape

CACHE = Path(os.environ.get("VIGIL_GUEST_CACHE", Path.home() / ".cache" / "vigil-guest"))
MODULES = ("watchdog.ko", "i6300esb.ko", "pvpanic.ko", "pvpanic-mmio.ko")
# The guest agent's channel: virtio-serial over PCI, loaded in this order.
VIRTIO_MODULES = (
    "virtio_ring.ko",
    "virtio.ko",
    "virtio_pci_legacy_dev.ko",
    "virtio_pci_modern_dev.ko",
    "virtio_pci.ko",
    "virtio_console.ko",
)
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"

AGENT_INIT = """
if [ -x /usr/sbin/qemu-ga ]; then
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
      virtio_console; do
    insmod /lib/$m.ko
  done
  ifconfig lo 127.0.0.1 up
  httpd -p 127.0.0.1:8080 -h /www
  port=""
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "org.qemu.guest_agent.0" ] && port="/dev/${p##*/}"
  done
  mkdir -p /var/run
  qemu-ga -m virtio-serial -p "$port" -t /var/run &
  echo "vigil-guest: guest agent on $port, httpd on 8080"
fi
"""

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/watchdog.ko
insmod /lib/i6300esb.ko nowayout=1
insmod /lib/pvpanic.ko
insmod /lib/pvpanic-mmio.ko
mode=idle
for word in $(cat /proc/cmdline); do
  case "$word" in vigil_mode=*) mode="${word#vigil_mode=}" ;; esac
done
echo "vigil-guest: up, mode $mode"
@AGENT@
case "$mode" in
  hang)
    watchdog -F -T 4 -t 1 /dev/watchdog &
    sleep 2
    kill -9 $!
    echo "vigil-guest: watchdog no longer petted"
    ;;
  panic)
    sleep 1
    echo "vigil-guest: panicking"
    echo c > /proc/sysrq-trigger
    ;;
  poweroff)
    sleep 1
    echo "vigil-guest: powering off"
    poweroff -f
    ;;
esac
while true; do sleep 3600; done
"""

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=0 quiet vigil_mode={mode}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>{on_crash}</on_crash>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>{channel}
    <watchdog model='i6300esb' action='{watchdog}'/>
    <panic model='isa'/>
  </devices>
</domain>
"""


class GuestUnavailable(RuntimeError):
    """The kernel package or busybox is missing (run tools/libvirt/setup)."""


CHANNEL_XML = """
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>"""


def agent_package() -> Path:
    debs = sorted(CACHE.glob("qemu-guest-agent_*.deb"))
    if not debs:
        raise GuestUnavailable(f"no qemu-guest-agent_*.deb in {CACHE} (run tools/libvirt/setup)")
    return debs[-1]


def _agent_files(workdir: Path) -> list[tuple[str, int, bytes]]:
    """qemu-ga from its package, and every shared library it loads (this machine's,
    as ``ldd`` resolves them), at their paths."""
    unpacked = workdir / "qga"
    subprocess.run(["dpkg-deb", "-x", str(agent_package()), str(unpacked)], check=True, timeout=120)
    binary = unpacked / "usr" / "sbin" / "qemu-ga"
    listing = subprocess.run(
        ["ldd", str(binary)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    libraries = []
    for line in listing.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            libraries.append(Path(path))
    if not any(p.name.startswith("ld-linux") for p in libraries):
        raise GuestUnavailable(f"ldd found no loader for qemu-ga: {listing}")
    entries = [("usr/sbin/qemu-ga", 0o100755, binary.read_bytes())]
    dirs: set[str] = {"usr", "usr/sbin"}
    for lib in libraries:
        name = str(lib).lstrip("/")
        parts = name.split("/")[:-1]
        for k in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:k]))
        entries.append((name, 0o100755, lib.resolve().read_bytes()))
    shutil.rmtree(unpacked, ignore_errors=True)
    return [(d, 0o040755, b"") for d in sorted(dirs)] + entries


def kernel_package() -> Path:
    debs = sorted(CACHE.glob("linux-image-*.deb"))
    if not debs:
        raise GuestUnavailable(f"no linux-image-*.deb in {CACHE} (run tools/libvirt/setup)")
    return debs[-1]


def _busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            return path
    raise GuestUnavailable("busybox is not installed (run tools/libvirt/setup)")


def check() -> None:
    """Raises unless a guest can be built here."""
    kernel_package()
    _busybox()


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); directories have empty data."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        out.write(header + raw)
        pad(len(header) + len(raw))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def build_guest(workdir: Path, *, guest_agent: bool = False) -> tuple[Path, Path]:
    """Extract the kernel and build the initramfs in ``workdir``; returns their paths.

    ``workdir`` must be readable by QEMU's user (libvirt-qemu): it is made 0755."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    kernel = workdir / "vmlinuz"
    initrd = workdir / ("initrd-ga.gz" if guest_agent else "initrd.gz")
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    deb = kernel_package()
    extract = workdir / "deb"
    extract.mkdir(exist_ok=True)
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True, timeout=120
    ).stdout
    modules: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            base = os.path.basename(member.name)
            if member.name.startswith("./boot/vmlinuz-"):
                data = archive.extractfile(member)
                assert data is not None
                kernel.write_bytes(data.read())
            elif (
                base in MODULES
                and ("/drivers/watchdog/" in member.name or "/pvpanic/" in member.name)
            ) or (
                guest_agent
                and base in VIRTIO_MODULES
                and ("/drivers/virtio/" in member.name or "/drivers/char/" in member.name)
            ):
                data = archive.extractfile(member)
                assert data is not None
                modules[base] = data.read()
    shutil.rmtree(extract, ignore_errors=True)
    wanted = MODULES + (VIRTIO_MODULES if guest_agent else ())
    missing = [m for m in wanted if m not in modules]
    if not kernel.exists() or missing:
        raise GuestUnavailable(f"{deb.name} lacks vmlinuz or modules {missing}")
    busybox = _busybox().read_bytes()
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "lib", "sbin", "usr", "tmp")
    ]
    entries.append(("bin/busybox", 0o100755, busybox))
    # busybox applets by symlink would need the symlink mode; hard copies are simpler
    # and the initramfs is compressed anyway.
    init = INIT.replace("@AGENT@", AGENT_INIT if guest_agent else "")
    entries.append(("init", 0o100755, init.encode()))
    entries += [(f"lib/{name}", 0o100644, modules[name]) for name in wanted]
    applets = ["sh", "mount", "insmod", "cat", "echo", "sleep", "kill", "watchdog"]
    if guest_agent:
        applets += ["ifconfig", "httpd", "wget", "killall", "mkdir", "pidof", "ps"]
        entries += [("var", 0o040755, b""), ("www", 0o040755, b"")]
        entries.append(("www/index.html", 0o100644, b"vigil-guest ok\n"))
        entries += [
            (n, m, d)
            for n, m, d in _agent_files(workdir)
            if m != 0o040755 or n not in {e[0] for e in entries}
        ]
    for applet in applets:
        entries.append((f"bin/{applet}", 0o120777, b"busybox"))
    entries.append(("sbin/poweroff", 0o120777, b"../bin/busybox"))
    initrd.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=6))
    for path in (kernel, initrd):
        path.chmod(0o644)
    return kernel, initrd


def domain_xml(
    *,
    name: str,
    uuid: str,
    kernel: Path,
    initrd: Path,
    console: Path,
    mode: str,
    watchdog: str = "none",
    on_crash: str = "destroy",
    guest_agent: bool = False,
) -> str:
    return DOMAIN_XML.format(
        channel=CHANNEL_XML if guest_agent else "",
        name=escape(name),
        uuid=uuid,
        kernel=escape(str(kernel)),
        initrd=escape(str(initrd)),
        console=escape(str(console)),
        mode=mode,
        watchdog=watchdog,
        on_crash=on_crash,
    )
