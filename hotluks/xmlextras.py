"""The parts of libvirt's ``<disk>`` beyond the source: tuning, ignored state, refused features, paths.

Pure helpers for :mod:`hotluks.xmlparse`. Each libvirt element or attribute ends in
one of three places: applied (a field of the model the planner turns into QMP),
ignored with a note (read-only state that ``virsh dumpxml`` prints), or refused
with the line and the reason.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from hotluks.disktypes import DriverOptions
from hotluks.errors import XMLError

if TYPE_CHECKING:
    from lxml import etree

Fail = Callable[[str, "etree._Element"], XMLError]

#: QEMU's THROTTLE_VALUE_MAX (util/throttle.c): larger limits are refused by QEMU
THROTTLE_VALUE_MAX = 10**15
#: iSCSI LUNs as libiscsi addresses them (SAM flat space: 14 bits)
MAX_ISCSI_LUN = 16383
#: virtio-scsi: one channel, targets 0..255, LUNs 0..16383 (hw/scsi/virtio-scsi.c)
MAX_SCSI_TARGET = 255
MAX_SCSI_LUN = 16383
MAX_SCSI_CONTROLLER = 255
#: Ceph monitors per rbd source, and librbd clone layers (secrets) per disk: generous, but bounded
MAX_HOSTS = 32
MAX_LAYERS = 16
#: Linux PATH_MAX / NAME_MAX
PATH_MAX = 4095
NAME_MAX = 255
#: paths that name QEMU's (or the caller's) own descriptors or kernel state, never a disk
INTERNAL_PATH_PREFIXES = ("/dev/fdset", "/dev/fd", "/proc", "/sys", "/dev/stdin", "/dev/stdout", "/dev/stderr")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_ASCII_UINT = re.compile(r"[0-9]+", re.ASCII)

#: libvirt <iotune> child → QEMU ThrottleLimits member
IOTUNE_KEYS = {
    "total_bytes_sec": "bps-total", "read_bytes_sec": "bps-read", "write_bytes_sec": "bps-write",
    "total_iops_sec": "iops-total", "read_iops_sec": "iops-read", "write_iops_sec": "iops-write",
    "size_iops_sec": "iops-size",
}
IOTUNE_KEYS.update({f"{k}_max": f"{v}-max" for k, v in list(IOTUNE_KEYS.items()) if k != "size_iops_sec"})
IOTUNE_KEYS.update({f"{k}_length": f"{v}-length" for k, v in list(IOTUNE_KEYS.items()) if k.endswith("_max")})

ERROR_POLICY = {"stop": "stop", "report": "report", "ignore": "ignore", "enospace": "enospc"}

#: disk children hotluks knows from libvirt but cannot apply, with the reason
REFUSED_DISK_CHILDREN = {
    "mirror": "a block job (<mirror>) is running on this disk in libvirt; finish it first",
    "transient": "<transient/> (an overlay discarded at shutdown) is a libvirt start-up feature",
    "geometry": "<geometry> (legacy CHS) is not supported",
    "throttlefilters": "<throttlefilters> is not supported; use <iotune>",
    "auth": "<auth> directly under <disk> is libvirt's legacy place; put it inside <source>",
}
SCSI_ONLY_CHILDREN = ("wwn", "vendor", "product")
REFUSED_SOURCE_CHILDREN = {
    "readahead": "curl <readahead>", "timeout": "curl <timeout>", "reconnect": "nbd <reconnect>",
    "reservations": "persistent reservations (<reservations>)", "initiator": "iscsi <initiator>",
    "snapshot": "<snapshot> inside <source>", "dataStore": "<dataStore>", "identity": "<identity>",
}


def line_of(el: etree._Element) -> int | None:
    return cast("int | None", el.sourceline)


def ascii_uint(text: str | None) -> int | None:
    """A decimal number written with ASCII digits only (``'١٢'`` is not 12), else None."""
    if text is None or not _ASCII_UINT.fullmatch(text):
        return None
    return int(text, 10)


def uint_attr(el: etree._Element, attr: str, fail: Fail, *, maximum: int, minimum: int = 0) -> int | None:
    value = el.get(attr)
    if value is None:
        return None
    number = ascii_uint(value)
    if number is None or not minimum <= number <= maximum:
        raise fail(f"<{el.tag} {attr}='{value}'> must be a number from {minimum} to {maximum}", el)
    return number


def normalized_path(path: str) -> str:
    """``path`` with ``//``, ``.`` and ``..`` folded as the kernel would without symlinks."""
    folded = posixpath.normpath(re.sub("/+", "/", path))
    return "/" if folded == "//" else folded


def path_problem(path: str) -> str | None:
    """Why no disk can have this path (too long, or QEMU's own descriptors / kernel state), else None."""
    raw = path.encode("utf-8", "surrogateescape")
    odd = next((c for c in path if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in BIDI_CONTROLS), None)
    if odd is not None:
        return f"path has a control character (U+{ord(odd):04X}); hotluks refuses such paths so messages stay honest"
    if len(raw) > PATH_MAX:
        return f"path is {len(raw)} bytes; Linux paths are at most {PATH_MAX}"
    long_part = next((p for p in path.split("/") if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)
    if long_part is not None:
        return f"a path component is longer than {NAME_MAX} bytes (ENAMETOOLONG): {long_part[:40]}…"
    norm = normalized_path(path)
    for prefix in INTERNAL_PATH_PREFIXES:
        if norm == prefix or norm.startswith(prefix + "/"):
            return (f"{path[:200]} names QEMU's or the kernel's internal state ({prefix}), not a disk; "
                    "give the real file or device")
    return None


def check_path(path: str, el: etree._Element, fail: Fail) -> None:
    problem = path_problem(path)
    if problem is not None:
        raise fail(problem, el)


def driver_options(el: etree._Element | None, fail: Fail) -> DriverOptions:
    """``<driver>`` attributes that have a QEMU equivalent."""
    if el is None:
        return DriverOptions()
    for child in el:
        hint = " (use <driver iothread='N'>: one IOThread per disk)" if child.tag == "iothreads" else ""
        raise fail(f"<driver><{child.tag}> is not supported{hint}", child)
    cache = el.get("cache")
    io = el.get("io")
    if io == "native" and cache not in ("none", "directsync"):
        raise fail("io='native' needs cache='none' or cache='directsync' (O_DIRECT), as in libvirt", el)

    def on_off(attr: str) -> bool | None:
        value = el.get(attr)
        return None if value is None else value == "on"

    return DriverOptions(
        cache=None if cache == "default" else cache,
        discard=el.get("discard"),
        io=io,
        detect_zeroes=el.get("detect_zeroes"),
        error_policy=el.get("error_policy"),
        rerror_policy=el.get("rerror_policy"),
        copy_on_read=el.get("copy_on_read") == "on",
        iothread=uint_attr(el, "iothread", fail, minimum=1, maximum=2**16),
        queues=uint_attr(el, "queues", fail, minimum=1, maximum=1024),
        queue_size=uint_attr(el, "queue_size", fail, minimum=2, maximum=1024),
        ioeventfd=on_off("ioeventfd"),
        event_idx=on_off("event_idx"),
        discard_no_unref=on_off("discard_no_unref"),
    )


def check_driver_for_bus(drv: DriverOptions, bus: str, fmt: str, el: etree._Element | None, fail: Fail,
                         root: etree._Element) -> None:
    """Refuse options the chosen device model has no property for."""
    where = el if el is not None else root
    if bus != "virtio":
        for attr, value in (("iothread", drv.iothread), ("queues", drv.queues), ("queue_size", drv.queue_size),
                            ("ioeventfd", drv.ioeventfd), ("event_idx", drv.event_idx)):
            if value is not None:
                raise fail(f"<driver {attr}=…> is a virtio-blk property; bus '{bus}' has none", where)
    if bus == "usb" and (drv.error_policy or drv.rerror_policy):
        raise fail("error_policy/rerror_policy are not available on usb-storage", where)
    if drv.discard_no_unref is not None and fmt != "qcow2":
        raise fail("discard_no_unref is a qcow2 option", where)
    if drv.queue_size is not None and drv.queue_size & (drv.queue_size - 1):
        raise fail(f"queue_size={drv.queue_size} must be a power of two (virtio)", where)


def iotune(el: etree._Element | None, fail: Fail) -> tuple[tuple[str, int], ...]:
    """``<iotune>`` → sorted ``(ThrottleLimits member, value)`` pairs; zero means "no limit" (as libvirt)."""
    if el is None:
        return ()
    limits: dict[str, int] = {}
    for child in el:
        if child.tag == "group_name":
            raise fail("<iotune><group_name> (limits shared between disks) is not supported: hotluks gives "
                       "each disk its own throttle group", child)
        key = IOTUNE_KEYS[str(child.tag)]
        value = ascii_uint((child.text or "").strip())
        if value is None or value > THROTTLE_VALUE_MAX:
            raise fail(f"<{child.tag}> must be a number from 0 to {THROTTLE_VALUE_MAX} (QEMU's limit)", child)
        if key in limits:
            raise fail(f"<{child.tag}> is given twice", child)
        if value:
            limits[key] = value
    for key in limits:
        base = key.removesuffix("-length").removesuffix("-max")
        if key.endswith("-max") and limits[key] < limits.get(base, 0):
            raise fail(f"iotune {key} must not be below {base} (QEMU refuses it)", el)
        if key.endswith("-length") and f"{base}-max" not in limits:
            raise fail(f"iotune {key} needs the matching *_max limit", el)
    for group in ("bps", "iops"):
        if f"{group}-total" in limits and ({f"{group}-read", f"{group}-write"} & limits.keys()):
            raise fail(f"iotune total_{'bytes' if group == 'bps' else 'iops'}_sec cannot be combined with "
                       "read/write limits of the same kind (as in libvirt)", el)
    return tuple(sorted(limits.items()))


def blockio(el: etree._Element | None, fail: Fail) -> tuple[tuple[str, int], ...]:
    if el is None:
        return ()
    out = []
    for attr in ("logical_block_size", "physical_block_size", "discard_granularity"):
        value = uint_attr(el, attr, fail, maximum=2**31)
        if value is None:
            continue
        if attr != "discard_granularity" and (value < 512 or value & (value - 1)):
            raise fail(f"<blockio {attr}='{value}'> must be a power of two ≥ 512", el)
        out.append((attr, value))
    sizes = dict(out)
    if sizes.get("physical_block_size", 1 << 40) < sizes.get("logical_block_size", 0):
        raise fail("physical_block_size must not be smaller than logical_block_size", el)
    return tuple(out)


def disk_notes_and_refusals(root: etree._Element, bus: str, fail: Fail) -> tuple[str, ...]:
    """Notes for ignored read-only state; refuse what hotluks knows but cannot apply."""
    notes: list[str] = []
    for child in root:
        tag = str(child.tag)
        if tag in REFUSED_DISK_CHILDREN:
            raise fail(REFUSED_DISK_CHILDREN[tag], child)
        if tag in SCSI_ONLY_CHILDREN and bus != "scsi":
            raise fail(f"<{tag}> is a SCSI disk property; bus '{bus}' has none", child)
        if tag == "backingStore":
            notes.append(f"line {line_of(child)}: <backingStore> ignored: QEMU opens the backing chain the "
                         "image names itself")
    alias = root.find("alias")
    if alias is not None and not str(alias.get("name")).startswith("ua-"):
        notes.append(f"line {line_of(alias)}: <alias name='{alias.get('name')}'> is libvirt's own (read-only "
                     "state) and ignored; use ua-… to name the device")
    if root.get("snapshot") is not None:
        notes.append(f"line {line_of(root)}: snapshot='{root.get('snapshot')}' ignored (a libvirt snapshot "
                     "default, not a device property)")
    model = root.get("model")
    if model is not None and model != "virtio":
        raise fail(f"model='{model}' is not supported (hotluks plugs the plain virtio-blk/scsi-hd/usb-storage "
                   "models)", root)
    if model == "virtio" and bus != "virtio":
        raise fail(f"model='virtio' needs bus='virtio', not '{bus}'", root)
    for attr in ("rawio", "sgio"):
        if root.get(attr) is not None:
            raise fail(f"{attr}= is for device='lun' passthrough, which hotluks does not do", root)
    target = root.find("target")
    if target is not None:
        if target.get("tray") is not None:
            raise fail("tray= is for cdrom and floppy devices", target)
        if target.get("rotation_rate") is not None and bus != "scsi":
            raise fail(f"rotation_rate is a SCSI disk property; bus '{bus}' has none", target)
    for enc in root.iter("encryption"):
        for child in enc:
            if child.tag in ("cipher", "ivgen"):
                notes.append(f"line {line_of(child)}: <encryption><{child.tag}> ignored: the LUKS header "
                             "says which cipher the volume uses")
    return tuple(notes)


def source_notes_and_refusals(el: etree._Element, fail: Fail) -> tuple[str, ...]:
    notes: list[str] = []
    for child in el:
        tag = str(child.tag)
        if tag in REFUSED_SOURCE_CHILDREN:
            raise fail(f"{REFUSED_SOURCE_CHILDREN[tag]} is not supported", child)
        if tag == "seclabel":
            notes.append(f"line {line_of(child)}: <seclabel> ignored: hotluks does not relabel files (see README "
                         "on file access under libvirt)")
    if el.get("index") is not None:
        notes.append(f"line {line_of(el)}: <source index='{el.get('index')}'> ignored (libvirt's read-only "
                     "state)")
    if el.get("startupPolicy") is not None:
        notes.append(f"line {line_of(el)}: startupPolicy ignored: it applies when libvirt starts a VM")
    return tuple(notes)


SCSI_TEXT_RULES = {"wwn": (r"(0x)?[0-9a-fA-F]{16}", "16 hex digits"), "vendor": (r"[ -~]{1,8}", "1-8 printable ASCII"),
                   "product": (r"[ -~]{1,16}", "1-16 printable ASCII")}


def scsi_properties(root: etree._Element, fail: Fail) -> tuple[tuple[str, str | int], ...]:
    """SCSI-only device properties given as ``<wwn>``, ``<vendor>``, ``<product>``, ``rotation_rate``."""
    out: list[tuple[str, str | int]] = []
    for tag, (pattern, what) in SCSI_TEXT_RULES.items():
        child = root.find(tag)
        if child is None:
            continue
        text = (child.text or "").strip()
        if len(child) or not re.fullmatch(pattern, text, re.ASCII):
            raise fail(f"<{tag}> must be {what}", child)
        out.append((tag, text if tag != "wwn" else "0x" + text.removeprefix("0x")))
    target = root.find("target")
    if target is not None and target.get("rotation_rate") is not None:
        rate = uint_attr(target, "rotation_rate", fail, maximum=65534)
        out.append(("rotation_rate", int(rate or 0)))
    return tuple(out)
