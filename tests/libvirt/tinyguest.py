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
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <watchdog model='i6300esb' action='{watchdog}'/>
    <panic model='isa'/>
  </devices>
</domain>
"""


class GuestUnavailable(RuntimeError):
    """The kernel package or busybox is missing (run tools/libvirt/setup)."""


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


def build_guest(workdir: Path) -> tuple[Path, Path]:
    """Extract the kernel and build the initramfs in ``workdir``; returns their paths.

    ``workdir`` must be readable by QEMU's user (libvirt-qemu): it is made 0755."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    kernel, initrd = workdir / "vmlinuz", workdir / "initrd.gz"
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
            elif base in MODULES and (
                "/drivers/watchdog/" in member.name or "/pvpanic/" in member.name
            ):
                data = archive.extractfile(member)
                assert data is not None
                modules[base] = data.read()
    shutil.rmtree(extract, ignore_errors=True)
    missing = [m for m in MODULES if m not in modules]
    if not kernel.exists() or missing:
        raise GuestUnavailable(f"{deb.name} lacks vmlinuz or modules {missing}")
    busybox = _busybox().read_bytes()
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "lib", "sbin", "usr", "tmp")
    ]
    entries.append(("bin/busybox", 0o100755, busybox))
    # busybox applets by symlink would need the symlink mode; hard copies are simpler
    # and the initramfs is compressed anyway.
    entries.append(("init", 0o100755, INIT.encode()))
    entries += [(f"lib/{name}", 0o100644, modules[name]) for name in MODULES]
    for applet in ("sh", "mount", "insmod", "cat", "echo", "sleep", "kill", "watchdog"):
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
) -> str:
    return DOMAIN_XML.format(
        name=escape(name),
        uuid=uuid,
        kernel=escape(str(kernel)),
        initrd=escape(str(initrd)),
        console=escape(str(console)),
        mode=mode,
        watchdog=watchdog,
        on_crash=on_crash,
    )
