"""``hotluks demo``: prove, on a throwaway VM, that a guest reads plaintext from a disk
whose LUKS header lives in a different file.

Everything happens in a temporary directory that is removed at the end: the
bundled engine makes a payload and a detached LUKS1 header, hotluks attaches
them to a running VM (a tiny Linux guest under TCG, or a guest-less VM read
through ``qemu-io`` when no kernel can be had), the guest's view is checked,
the disk is detached and the VM stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotluks.demo.qemu.qemuio import parse_hexdump
from hotluks.errors import HotluksError

PAYLOAD_BYTES = 16 * 1024 * 1024
BANNER = b"hotluks demo: this sentence was encrypted on the host and read back by the guest.\n"
LUKS_MAGIC = b"LUKS\xba\xbe"
SERIAL = "hotluks-demo"
TARGET = "vdb"


@dataclass
class DemoStep:
    title: str
    seconds: float
    ok: bool | None = None
    detail: str = ""
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "seconds": round(self.seconds, 4), "ok": self.ok, "detail": self.detail,
                "lines": self.lines}


@dataclass
class DemoReport:
    mode: str = "guest"
    steps: list[DemoStep] = field(default_factory=list)
    error: str | None = None

    @property
    def checks(self) -> list[DemoStep]:
        return [s for s in self.steps if s.ok is not None]

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(s.ok for s in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "mode": self.mode, "error": self.error,
                "total_seconds": round(sum(s.seconds for s in self.steps), 3),
                "steps": [s.to_json() for s in self.steps]}


def plaintext(size: int = PAYLOAD_BYTES) -> bytes:
    """The demo's recognisable plaintext: a banner, then a deterministic byte stream."""
    stream = hashlib.shake_256(b"hotluks-demo").digest(size - len(BANNER))
    return BANNER + stream


def disk_xml(payload: Path, header: Path) -> str:
    return f"""<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='{payload}'/>
  <encryption format='luks' engine='qemu'>
    <secret type='passphrase' usage='hotluks-demo'/>
    <header type='file'>
      <source file='{header}'/>
    </header>
  </encryption>
  <target dev='{TARGET}' bus='virtio'/>
  <serial>{SERIAL}</serial>
</disk>"""


class _Demo:
    def __init__(self, emit: Callable[[DemoStep], None], use_guest: bool):
        self.emit = emit
        self.use_guest = use_guest
        self.report = DemoReport(mode="guest" if use_guest else "guest-less")
        self.work = Path(tempfile.mkdtemp(prefix="hotluks-demo-"))
        self.passphrase = os.urandom(24).hex().encode()  # never printed
        self.master_key = os.urandom(32)
        self.cleanups: list[Callable[[], None]] = []

    def step(self, title: str, started: float, ok: bool | None = None, detail: str = "",
             lines: list[str] | None = None) -> DemoStep:
        s = DemoStep(title, time.monotonic() - started, ok, detail, lines or [])
        self.report.steps.append(s)
        self.emit(s)
        return s

    # -- stages ------------------------------------------------------------------
    def make_disk(self) -> tuple[Path, Path, str]:
        from hotluks import luks

        t = time.monotonic()
        payload, header = self.work / "payload.raw", self.work / "header.img"
        with open(payload, "wb") as fh:
            fh.truncate(PAYLOAD_BYTES)
        luks.format_volume(payload, self.passphrase, type="luks1", header=header, cipher="aes-xts-plain64",
                           key_size=512, kdf=luks.make_kdf("pbkdf2", iter_time_ms=100))
        data = plaintext()
        luks.encrypt_payload(io.BytesIO(data), payload, self.passphrase, header=header)
        digest = hashlib.sha256(data).hexdigest()
        self.step("create payload + detached LUKS1 header (bundled engine)", t,
                  detail=f"payload {PAYLOAD_BYTES >> 20} MiB, header {header.stat().st_size >> 10} KiB, "
                         f"plaintext sha256 {digest[:16]}…")
        t = time.monotonic()
        raw = payload.read_bytes()
        leaks = [what for what, needle in (("banner", BANNER[:32]), ("LUKS magic", LUKS_MAGIC)) if needle in raw]
        self.step("payload holds no plaintext and no LUKS signature", t, ok=not leaks,
                  detail="found " + ", ".join(leaks) if leaks else
                  f"first bytes {raw[:8].hex()} (random-looking); header magic only in header.img")
        return payload, header, digest

    def start_vm(self) -> Any:
        key_file = self.work / "master.key"
        key_file.write_bytes(self.master_key)
        os.chmod(key_file, 0o600)
        master_arg = ["-object", f"secret,id=masterKey0,format=raw,file={key_file}"]
        t = time.monotonic()
        if self.use_guest:
            from hotluks.demo.guest.build import build_guest
            from hotluks.demo.guest.errors import GuestUnavailableError

            try:
                artifacts = build_guest()
            except GuestUnavailableError as exc:
                self.use_guest = False
                self.report.mode = "guest-less"
                self.step("no guest kernel available: using a guest-less VM and qemu-io", t,
                          detail=str(exc)[:200])
            else:
                self.step("tiny Linux guest ready (Debian kernel + busybox initramfs)", t,
                          detail=f"kernel {artifacts.kernel.parent.name}")
                from hotluks.demo.guest.vm import boot_guest

                t = time.monotonic()
                guest = boot_guest(artifacts, extra_args=master_arg)
                self.cleanups.append(guest.stop)
                self.step("boot guest under TCG until its agent answers", t, detail=f"pid {guest.qemu.pid}")
                return guest
        from hotluks.demo.qemu.launcher import start_qemu

        vm = start_qemu([*master_arg, "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                         "-device", "pcie-root-port,id=rp1,chassis=1,bus=pcie.0,addr=0x3"])
        self.cleanups.append(vm.stop)
        self.step("start a guest-less QEMU (paused, q35)", t, detail=f"pid {vm.pid}")
        return vm

    async def run(self) -> None:
        import hotluks
        from hotluks.model import Disk

        payload, header, digest = self.make_disk()
        vm = self.start_vm()
        qemu = vm.qemu if self.use_guest else vm
        disk = Disk.from_xml(disk_xml(payload, header))
        state = self.work / "state"
        async with hotluks.aconnect(f"unix:{qemu.qmp_path}", state_dir=state, master_key=self.master_key) as session:
            before = await _snapshot(session)
            t = time.monotonic()
            result = await session.attach(disk, {"hotluks-demo": self.passphrase})
            lines = [f"{s.execute:<13} {s.name:<18} {s.seconds * 1000:7.2f} ms" for s in result.steps]
            self.step(f"attach: preflight + {len(result.steps)} QMP steps (secret sealed with masterKey0)", t,
                      detail=result.preflight, lines=lines)
            if self.use_guest:
                await self.guest_checks(vm, digest)
            else:
                await self.qemu_io_check(session, qemu, result.top_node)
            t = time.monotonic()
            detached = await session.detach(TARGET, timeout=15)
            self.step("detach: device_del → DEVICE_DELETED, blockdev-del ×5, object-del", t,
                      detail=f"{len(detached.removed)} objects removed")
            if self.use_guest:
                t = time.monotonic()
                async with vm.async_agent() as agent:
                    await agent.wait_device_gone(SERIAL, timeout=10)
                self.step("the guest no longer sees the disk", t, ok=True)
            t = time.monotonic()
            after = await _snapshot(session)
            self.step("VM back to its initial block nodes, objects and devices", t, ok=after == before,
                      detail="" if after == before else f"before {before}, after {after}")
        wire = (state).rglob("*")
        secret_on_disk = any(self.passphrase in p.read_bytes() for p in wire if p.is_file())
        t = time.monotonic()
        self.step("no passphrase in hotluks' state directory", t, ok=not secret_on_disk)

    async def guest_checks(self, guest: Any, digest: str) -> None:
        async with guest.async_agent() as agent:
            t = time.monotonic()
            dev = await agent.wait_for_device(SERIAL, timeout=15)
            self.step(f"guest sees /dev/{dev.name} ({dev.size >> 20} MiB, serial {SERIAL})", t, ok=True)
            t = time.monotonic()
            head = await agent.read(dev.name, 0, len(BANNER))
            self.step("guest reads the first sector", t, ok=head == BANNER,
                      detail=head.decode(errors="replace").strip())
            t = time.monotonic()
            seen = await agent.sha256(dev.name)
            self.step("guest's sha256 of the whole disk equals the host plaintext's", t, ok=seen == digest,
                      detail=f"{seen[:16]}… vs {digest[:16]}…")

    async def qemu_io_check(self, session: Any, qemu: Any, node: str) -> None:
        t = time.monotonic()
        mark = len(qemu.output())
        await session.backend.execute("human-monitor-command",
                                      {"command-line": f'qemu-io {node} "read -v 0 {len(BANNER)}"'})
        dumped = await _wait_output(qemu, mark)
        try:
            text = parse_hexdump(dumped, 0, len(BANNER))
        except ValueError as exc:
            text = str(exc).encode()
        self.step("QEMU reads the plaintext through the luks node (qemu-io)", t, ok=text.startswith(BANNER),
                  detail=text[: len(BANNER)].decode(errors="replace").strip())

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        shutil.rmtree(self.work, ignore_errors=True)


async def _snapshot(session: Any) -> tuple[frozenset[str], ...]:
    from hotluks.runner.vmstate import snapshot

    snap = await snapshot(session.backend)
    return (snap.nodes, snap.objects, snap.devices)


async def _wait_output(qemu: Any, mark: int, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = str(qemu.output())[mark:]
        if "ops/sec" in out:
            return out
        await asyncio.sleep(0.05)
    return str(qemu.output())[mark:]


def run_demo(emit: Callable[[DemoStep], None] = lambda s: None, *, use_guest: bool = True) -> DemoReport:
    """Run the whole demo; always cleans up. ``emit`` sees each step as it finishes."""
    demo = _Demo(emit, use_guest)
    try:
        asyncio.run(demo.run())
    except HotluksError as exc:
        demo.report.error = f"{type(exc).__name__}: {exc}"
    finally:
        demo.close()
    return demo.report
