"""An in-memory QEMU behind the :class:`MonitorBackend` interface, for the fast suite.

It models what hotluks touches — block nodes and the nodes/devices using them, QOM
objects, peripheral devices on PCIe root ports / a SCSI bus, fdsets, and the guest's
part of an unplug (``DEVICE_DELETED``) — and is as strict as QEMU where hotluks could
get it wrong: duplicate names, unknown references, deleting a node that a node or
device uses, unplugging a device twice, ``remove-fd`` of an unknown set. Error texts
follow QEMU 10's.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hotluks.backends.base import MonitorBackend, QMPArgs, QMPCommandError, VMIdentity

#: a tiny query-qmp-schema: blockdev-add with file/host_device/raw/qcow2/luks(header)/rbd/nbd/iscsi
SCHEMA: list[dict[str, Any]] = [
    {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
    {"name": "0", "meta-type": "object", "members": [{"name": "driver", "type": "2"}], "tag": "driver",
     "variants": [{"case": d, "type": "10"} for d in ("file", "host_device", "raw", "qcow2", "nbd", "iscsi")]
     + [{"case": "luks", "type": "11"}, {"case": "rbd", "type": "12"}]},
    {"name": "10", "meta-type": "object", "members": []},
    {"name": "11", "meta-type": "object", "members": [{"name": m, "type": "str"} for m in ("key-secret", "file",
                                                                                             "header")]},
    {"name": "12", "meta-type": "object", "members": [{"name": "encrypt", "type": "13"}]},
    {"name": "13", "meta-type": "object", "members": [{"name": "format", "type": "14"},
                                                      {"name": "parent", "type": "13"}]},
    {"name": "14", "meta-type": "enum", "values": ["luks", "luks2", "luks-any"]},
]
NODE_REFS = ("file", "header", "backing")
SECRET_REFS = ("key-secret", "password-secret")
Guest = Literal["responsive", "paused"]


def _error(command: str, desc: str) -> QMPCommandError:
    return QMPCommandError(command, "GenericError", desc)


@dataclass
class FakeState:
    """Everything the fake VM holds (compare two with ``==`` for "as before")."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    fdsets: dict[int, list[str]] = field(default_factory=dict)
    unplugging: set[str] = field(default_factory=set)


class FakeQemu(MonitorBackend):
    """A q35 VM with root ports ``rp1..rpN`` and a ``scsi0`` controller, and no disks."""

    def __init__(self, *, vm: str = "/run/fake.qmp", ports: int = 4, passes_fds: bool = False,
                 identity: VMIdentity | None = None, guest: Guest = "responsive"):
        super().__init__()
        self.name = "qmp" if not passes_fds else "libvirt"
        self.vm = vm
        self.passes_fds = passes_fds
        self.ident = identity or VMIdentity("fake-vm", "fake-instance-1")
        self.guest: Guest = guest
        self.state = FakeState()
        self.state.objects["pc.ram"] = "memory-backend-ram"
        for i in range(1, ports + 1):
            self.state.devices[f"rp{i}"] = {"driver": "pcie-root-port", "bus": "pcie.0"}
        self.state.devices["scsi0"] = {"driver": "virtio-scsi-pci", "bus": "pcie.0"}
        self.log: list[tuple[str, dict[str, Any]]] = []  # every command, as sent

    @property
    def vm_key(self) -> str:
        return self.ident.key

    async def identity(self) -> VMIdentity:
        return self.ident

    def snapshot_state(self) -> FakeState:
        return copy.deepcopy(self.state)

    # -- the guest ------------------------------------------------------------------------------
    def cont(self) -> None:
        """Resume a paused guest: it acknowledges every pending unplug."""
        self.guest = "responsive"
        for device in sorted(self.state.unplugging):
            self._finish_unplug(device)

    def _finish_unplug(self, device: str) -> None:
        if device in self.state.devices:
            del self.state.devices[device]
            self.state.unplugging.discard(device)
            self._dispatch_event({"event": "DEVICE_DELETED", "data": {"device": device,
                                                                       "path": f"/machine/peripheral/{device}"}})

    # -- QMP ------------------------------------------------------------------------------------------
    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        args = copy.deepcopy(dict(arguments or {}))
        self.log.append((command, args))
        await asyncio.sleep(0)  # a real round trip yields to the loop
        handler = getattr(self, "_q_" + command.replace("-", "_"), None)
        if handler is None:
            raise QMPCommandError(command, "CommandNotFound", f"The command {command} has not been found")
        return handler(args)

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        if not self.passes_fds:
            return await super().execute_with_fds(command, arguments, fds)
        for fd in fds:
            os.fstat(fd)  # a real descriptor must arrive
        return await self.execute(command, arguments)

    def _q_query_version(self, args: dict[str, Any]) -> Any:
        return {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "fake"}

    def _q_query_qmp_schema(self, args: dict[str, Any]) -> Any:
        return copy.deepcopy(SCHEMA)

    def _q_qom_get(self, args: dict[str, Any]) -> Any:
        if args == {"path": "/machine", "property": "type"}:
            return "pc-q35-10.0-machine"
        raise _error("qom-get", f"Property '{args.get('property')}' not found")

    def _q_query_named_block_nodes(self, args: dict[str, Any]) -> Any:
        return [{"node-name": n, "drv": v["driver"]} for n, v in self.state.nodes.items()]

    def _q_qom_list(self, args: dict[str, Any]) -> Any:
        path = str(args.get("path"))
        if path == "/objects":
            return [{"name": k, "type": f"child<{t}>"} for k, t in self.state.objects.items()]
        if path == "/machine/peripheral":
            return [{"name": k, "type": f"child<{d['driver']}>"} for k, d in self.state.devices.items()]
        parts = path.split("/")
        if len(parts) == 5 and parts[:3] == ["", "machine", "peripheral"] and parts[3] == parts[4]:
            users = [k for k, d in self.state.devices.items() if d.get("bus") == parts[3]]
            return [{"name": f"child[{i}]", "type": "link<virtio-blk-pci>"} for i, _ in enumerate(users)]
        raise _error("qom-list", f"Device '{path}' not found")

    def _q_query_pci(self, args: dict[str, Any]) -> Any:
        ports = [{"qdev_id": k, "pci_bridge": {"devices": [{"qdev_id": u} for u, d in self.state.devices.items()
                                                         if d.get("bus") == k]}}
                 for k, d in self.state.devices.items() if d["driver"] == "pcie-root-port"]
        return [{"bus": 0, "devices": ports}]

    def _q_query_fdsets(self, args: dict[str, Any]) -> Any:
        return [{"fdset-id": i, "fds": [{"fd": 100 + n, "opaque": o} for n, o in enumerate(fds)]}
                for i, fds in sorted(self.state.fdsets.items())]

    def _q_add_fd(self, args: dict[str, Any]) -> Any:
        fdset = args.get("fdset-id")
        if fdset is None:
            fdset = next(i for i in range(len(self.state.fdsets) + 1) if i not in self.state.fdsets)
        if int(fdset) < 0:
            raise _error("add-fd", "fdset-id must be a positive value")
        self.state.fdsets.setdefault(int(fdset), []).append(str(args.get("opaque", "")))
        return {"fdset-id": fdset, "fd": 100}

    def _q_remove_fd(self, args: dict[str, Any]) -> Any:
        fdset = int(args["fdset-id"])
        if fdset not in self.state.fdsets:
            raise _error("remove-fd", f"File descriptor named 'fdset-id:{fdset}' not found")
        del self.state.fdsets[fdset]  # hidden from query-fdsets at once; QEMU frees it when unused
        return {}

    def _q_object_add(self, args: dict[str, Any]) -> Any:
        obj_id = str(args.get("id"))
        if obj_id in self.state.objects:
            raise _error("object-add", f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
        if args.get("qom-type") == "secret" and "data" not in args and "file" not in args:
            raise _error("object-add", "Either 'data' or 'file' must be provided")
        self.state.objects[obj_id] = str(args.get("qom-type"))
        return {}

    def _q_object_del(self, args: dict[str, Any]) -> Any:
        obj_id = str(args.get("id"))
        if obj_id not in self.state.objects:
            raise _error("object-del", f"object '{obj_id}' not found")
        del self.state.objects[obj_id]
        return {}

    def _refs(self, value: Any) -> list[tuple[str, str]]:
        """(kind, name) of every node/secret a blockdev-add argument tree names."""
        out: list[tuple[str, str]] = []
        if isinstance(value, dict):
            for key, sub in value.items():
                if key in NODE_REFS and isinstance(sub, str):
                    out.append(("node", sub))
                elif key in SECRET_REFS and isinstance(sub, str):
                    out.append(("secret", sub))
                else:
                    out += self._refs(sub)
        return out

    def _q_blockdev_add(self, args: dict[str, Any]) -> Any:
        name = args.get("node-name")
        if not name:
            raise _error("blockdev-add", "A block device must be given a node-name")
        if name in self.state.nodes:
            raise _error("blockdev-add", f"Duplicate nodes with node-name='{name}'")
        for kind, ref in self._refs(args):
            if kind == "node" and ref not in self.state.nodes:
                raise _error("blockdev-add", f"Cannot find device='' nor node-name='{ref}'")
            if kind == "node" and self._users().get(ref):
                raise _error("blockdev-add", f"Node '{ref}' is already in use")
            if kind == "secret" and ref not in self.state.objects:
                raise _error("blockdev-add", f"No secret with id '{ref}'")
        filename = str(args.get("filename", ""))
        if filename.startswith("/dev/fdset/") and int(filename[11:]) not in self.state.fdsets:
            raise _error("blockdev-add", f"Could not open '{filename}': No such file or directory")
        self.state.nodes[str(name)] = args
        return {}

    def _users(self) -> dict[str, set[str]]:
        """node → the nodes and devices that use it."""
        users: dict[str, set[str]] = {n: set() for n in self.state.nodes}
        for name, args in self.state.nodes.items():
            for kind, ref in self._refs(args):
                if kind == "node":
                    users.setdefault(ref, set()).add(name)
        for dev, args in self.state.devices.items():
            if args.get("drive"):
                users.setdefault(str(args["drive"]), set()).add(dev)
        return users

    def _q_blockdev_del(self, args: dict[str, Any]) -> Any:
        name = str(args.get("node-name"))
        if name not in self.state.nodes:
            raise _error("blockdev-del", f"Failed to find node with node-name='{name}'")
        users = self._users().get(name, set())
        if users:
            raise _error("blockdev-del", f"Node '{name}' is busy: used by {', '.join(sorted(users))}")
        del self.state.nodes[name]
        return {}

    def _q_device_add(self, args: dict[str, Any]) -> Any:
        dev_id = str(args.get("id"))
        if dev_id in self.state.devices:
            raise _error("device_add", f"Duplicate device ID '{dev_id}' for device")
        drive = str(args.get("drive", ""))
        if drive not in self.state.nodes:
            raise _error("device_add", f"Property '{args.get('driver')}.drive' can't find value '{drive}'")
        if self._users().get(drive):
            raise _error("device_add", f"Drive '{drive}' is already in use")
        bus = args.get("bus")
        if bus is not None:
            base = str(bus).split(".")[0]
            if base not in self.state.devices and bus not in ("pcie.0",):
                raise _error("device_add", f"Bus '{bus}' not found")
            target = self.state.devices.get(base, {})
            occupant = next((k for k, d in self.state.devices.items() if d.get("bus") == bus), None)
            if target.get("driver") == "pcie-root-port" and occupant is not None:
                raise _error("device_add", f"PCI: slot 0 function 0 not available for {args.get('driver')}, "
                                           f"in use by {self.state.devices[occupant].get('driver')},id={occupant}")
        self.state.devices[dev_id] = args
        return {}

    def _q_device_del(self, args: dict[str, Any]) -> Any:
        dev_id = str(args.get("id"))
        if dev_id not in self.state.devices:
            raise QMPCommandError("device_del", "DeviceNotFound", f"Device '{dev_id}' not found")
        if dev_id in self.state.unplugging:
            raise _error("device_del", f"Device {dev_id} is already in the process of unplug")
        self.state.unplugging.add(dev_id)
        if self.guest == "responsive":
            asyncio.get_running_loop().call_soon(self._finish_unplug, dev_id)
        return {}
