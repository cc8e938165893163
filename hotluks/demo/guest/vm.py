"""Boot the tiny guest under QEMU (TCG by default) and hand out its QMP sockets and agent.

VM layout (see :data:`PC_LAYOUT` / :data:`Q35_LAYOUT`):

* ``pc`` (default): disks hot-plug straight onto ``pci.0`` (ACPI PCI hotplug; a
  live guest ejects in ~0.1 s); a ``virtio-scsi-pci`` controller ``scsi0`` at a
  fixed slot, whose bus ``scsi0.0`` takes ``scsi-hd`` devices.
* ``q35``: ``pcie-root-port`` ports ``rp1``..``rpN`` for hot-plugged PCI devices
  (one device per port), the same ``scsi0`` controller on ``pcie.0``.

Serial ports: ``ttyS0`` is the kernel console (logged to ``console.log``),
``ttyS1`` is the agent (``agent.sock``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotluks.demo.guest.agent import GuestAgent, SyncGuestAgent
from hotluks.demo.guest.build import GuestArtifacts, build_guest
from hotluks.demo.guest.errors import GuestAgentError, GuestBootError
from hotluks.demo.qemu.launcher import QemuProcess, start_qemu

CONSOLE_PORT = "ttyS0"
AGENT_PORT = "ttyS1"
SCSI_CONTROLLER = "scsi0"
SCSI_BUS = "scsi0.0"
CONSOLE_LOG = "console.log"
AGENT_SOCKET = "agent.sock"


@dataclass(frozen=True)
class VMLayout:
    """Machine type and the buses/controllers a test or the demo plugs disks into."""

    machine: str
    #: bus for ``device_add`` of PCI disks when no root ports are used (``pci.0`` on pc)
    pci_bus: str
    scsi_controller: str = SCSI_CONTROLLER
    scsi_bus: str = SCSI_BUS
    #: PCI slot of the SCSI controller on ``pci_bus``
    scsi_slot: int = 0x05
    #: q35 only: ids of empty ``pcie-root-port`` devices to hot-plug into
    root_ports: tuple[str, ...] = ()
    globals: tuple[str, ...] = ()

    def qemu_args(self) -> list[str]:
        """``-device``/``-global`` arguments that build the layout."""
        args: list[str] = []
        for option in self.globals:
            args += ["-global", option]
        for i, port in enumerate(self.root_ports, start=1):
            args += ["-device", f"pcie-root-port,id={port},chassis={i},bus={self.pci_bus},addr={0x10 + i - 1:#x}"]
        args += ["-device", f"virtio-scsi-pci,id={self.scsi_controller},bus={self.pci_bus},addr={self.scsi_slot:#x}"]
        return args

    def pci_bus_for(self, index: int = 0) -> str:
        """Where the ``index``-th hot-plugged PCI disk goes (a root port on q35)."""
        if self.root_ports:
            return self.root_ports[index % len(self.root_ports)]
        return self.pci_bus


PC_LAYOUT = VMLayout(machine="pc", pci_bus="pci.0")
Q35_LAYOUT = VMLayout(machine="q35", pci_bus="pcie.0", root_ports=tuple(f"rp{i}" for i in range(1, 5)))
DEFAULT_LAYOUT = PC_LAYOUT


def kernel_cmdline(agent_port: str = AGENT_PORT, extra: str = "") -> str:
    """The guest's kernel command line: quiet console on ttyS0, agent port, reboot→exit on panic.

    Later words win, so ``extra`` may override (e.g. ``loglevel=8 hotluks.printk=8``).
    """
    line = f"console={CONSOLE_PORT} quiet loglevel=1 panic=-1 hotluks.agent={agent_port}"
    return f"{line} {extra}".strip()


@dataclass(frozen=True)
class GuestBootSpec:
    """Everything needed to boot the same guest elsewhere (e.g. a libvirt ``<os>``/``<serial>``)."""

    kernel: Path
    initrd: Path
    cmdline: str
    machine: str
    memory_mb: int
    #: ttyS0's log file; ``None`` when the agent shares ttyS0 with the console
    console_log: Path | None
    agent_socket: Path
    layout: VMLayout

    def qemu_args(self) -> list[str]:
        """Kernel, serial ports and layout arguments (machine/memory/QMP come from the launcher)."""
        serials = []
        if self.console_log is not None:
            serials += ["-chardev", f"file,id=console0,path={self.console_log}", "-serial", "chardev:console0"]
        serials += ["-chardev", f"socket,id=agent0,path={self.agent_socket},server=on,wait=off",
                    "-serial", "chardev:agent0"]
        return [
            "-no-reboot",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline,
            *serials,
            *self.layout.qemu_args(),
        ]


@dataclass
class BootedGuest:
    """A running guest: its QEMU process, QMP sockets and agent socket. Stop it with :meth:`stop`."""

    qemu: QemuProcess
    spec: GuestBootSpec
    workdir: Path
    boot_seconds: float
    _agent: SyncGuestAgent | None = field(default=None, repr=False)

    @property
    def layout(self) -> VMLayout:
        return self.spec.layout

    @property
    def qmp_paths(self) -> list[Path]:
        """Every QMP socket (one client each): ``qmp_paths[0]`` is ``qemu.qmp_path``."""
        return [self.qemu.qmp_path, *self.qemu.extra_sockets]

    @property
    def agent_path(self) -> Path:
        return self.spec.agent_socket

    @property
    def agent(self) -> SyncGuestAgent:
        """A synchronous agent client, connected on first use (release with :meth:`release_agent`)."""
        if self._agent is None:
            self._agent = SyncGuestAgent(self.agent_path)
        return self._agent

    def release_agent(self) -> None:
        """Close the synchronous client so an async one can connect (QEMU serves one at a time)."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    @contextlib.asynccontextmanager
    async def async_agent(self, timeout: float = 15.0) -> AsyncIterator[GuestAgent]:
        """An asyncio agent client on the running loop (closes the sync one first)."""
        self.release_agent()
        agent = await GuestAgent.open(self.agent_path, timeout)
        try:
            yield agent
        finally:
            await agent.close()

    def console_text(self) -> str:
        """The kernel console (ttyS0) so far ("" when the agent shares ttyS0)."""
        if self.spec.console_log is None:
            return ""
        try:
            return self.spec.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Close the agent, end QEMU by its PID and remove the working directory."""
        self.release_agent()
        self.qemu.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BootedGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boot_guest(artifacts: GuestArtifacts | None = None, *, layout: VMLayout = DEFAULT_LAYOUT,
               memory_mb: int = 256, qmp_sockets: int = 1, accel: str | None = None,
               extra_args: Sequence[str] = (), cmdline_extra: str = "", shared_console: bool = False,
               ready_timeout: float = 90.0) -> BootedGuest:
    """Start QEMU with the guest and return once its agent answers.

    ``shared_console`` puts the agent on ttyS0 together with the kernel console
    (one serial port, as a libvirt domain with one ``<serial>`` has); with
    ``cmdline_extra="hotluks.printk=8"`` the kernel stays chatty after boot.

    ``artifacts`` defaults to :func:`build_guest` (cached). ``accel`` defaults to the
    launcher's choice for real guests (TCG unless ``HOTLUKS_ACCEL`` says otherwise).
    On failure QEMU is stopped and :class:`GuestBootError` carries the console tail.
    """
    artifacts = artifacts or build_guest()
    workdir = Path(tempfile.mkdtemp(prefix="hotluks-guest-"))
    agent_port = CONSOLE_PORT if shared_console else AGENT_PORT
    spec = GuestBootSpec(
        kernel=artifacts.kernel, initrd=artifacts.initrd,
        cmdline=kernel_cmdline(agent_port=agent_port, extra=cmdline_extra),
        machine=layout.machine, memory_mb=memory_mb, console_log=None if shared_console else workdir / CONSOLE_LOG,
        agent_socket=workdir / AGENT_SOCKET, layout=layout,
    )
    start = time.monotonic()
    try:
        qemu = start_qemu([*spec.qemu_args(), *extra_args], machine=layout.machine, memory_mb=memory_mb,
                          guest=True, accel=accel, qmp_sockets=qmp_sockets, workdir=workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    guest = BootedGuest(qemu=qemu, spec=spec, workdir=workdir, boot_seconds=0.0)
    try:
        with SyncGuestAgent(spec.agent_socket) as agent:
            agent.wait_ready(ready_timeout)
        guest.boot_seconds = time.monotonic() - start
    except GuestAgentError as exc:
        console = guest.console_text()[-1500:].strip()
        output = qemu.output()[-1000:].strip()
        guest.stop()
        raise GuestBootError(f"the guest did not become ready: {exc}; console: {console or '(empty)'}"
                             f"{'; qemu: ' + output if output else ''}") from None
    except BaseException:
        guest.stop()
        raise
    return guest



def libvirt_boot_options(artifacts: GuestArtifacts, serial_socket: Path, *,
                         layout: VMLayout = DEFAULT_LAYOUT) -> dict[str, object]:
    """How a libvirt domain boots this guest, as ``<os>``/``<serial>`` data.

    The keys match ``testsupport.libvirtd.domain_xml``/``start_domain``: ``kernel``,
    ``initrd``, ``cmdline`` (``<os>``), ``serial_socket`` (one ``<serial type='unix'>``
    bound on port 0) and ``machine``. With a single serial port the agent shares
    ttyS0 with the (quiet) kernel console; the reply framing tolerates that.
    libvirt runs QEMU as another user: ``kernel``/``initrd`` must be readable by it
    (copy them out of ``~/.cache`` first). On q35 keep ACPI hotplug for a live guest:
    native PCIe hotplug makes the guest wait ~5 s before it releases a device.
    """
    return {
        "kernel": artifacts.kernel,
        "initrd": artifacts.initrd,
        "cmdline": kernel_cmdline(agent_port=CONSOLE_PORT),
        "serial_socket": serial_socket,
        "machine": layout.machine,
    }
