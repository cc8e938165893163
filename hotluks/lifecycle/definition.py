"""Adding and removing one disk's ``<qemu:commandline>`` arguments in a libvirt domain definition. Pure.

Each disk's arguments are recognised by their ids (``hl-<target>…`` objects, nodes and
device, as :class:`hotluks.plan.names.Namer` makes them); the shared key object
(``hotluks-key0``) stays while any hotluks disk remains.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hotluks.lifecycle.libvirt_cmdline import KEY_OBJECT, QEMU_NS


def _arg_id(value: str) -> str:
    try:
        props: Any = json.loads(value)
    except ValueError:
        return ""
    if not isinstance(props, dict):
        return ""
    return str(props.get("id") or props.get("node-name") or "")


def _pairs(cmd: Any) -> list[tuple[Any, Any]]:
    args = list(cmd.iterfind(f"{{{QEMU_NS}}}arg"))
    return [(args[i], args[i + 1]) for i in range(0, len(args) - 1, 2)
            if str(args[i].get("value", "")).startswith("-")]


def _owned(arg_id: str, prefix: str | Sequence[str]) -> bool:
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    return any(arg_id == p or arg_id.startswith(p + "-") for p in prefixes)


def _commandline(root: Any) -> Any:
    from lxml import etree

    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    if cmd is None:
        cmd = etree.SubElement(root, f"{{{QEMU_NS}}}commandline")
    return cmd


def _parse(domain_xml: str) -> Any:
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    root = etree.fromstring(domain_xml.encode(), parser)
    if root.nsmap.get("qemu") != QEMU_NS:  # lxml cannot add a namespace declaration in place: rebuild the root
        nsmap = {str(k): v for k, v in root.nsmap.items() if k is not None}  # a domain XML has no default ns
        nsmap["qemu"] = QEMU_NS
        new = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=nsmap)
        new.text = root.text
        new.extend(list(root))
        root = new
    return root


def _serialize(root: Any) -> str:
    from lxml import etree

    return str(etree.tostring(root, pretty_print=True, encoding="unicode"))


def has_disk(domain_xml: str, prefix: str | Sequence[str]) -> bool:
    """Whether the definition carries arguments of the disk whose ids start with ``prefix`` (``hl-vdb``)."""
    root = _parse(domain_xml)
    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    return cmd is not None and any(_owned(_arg_id(str(v.get("value"))), prefix) for _, v in _pairs(cmd))


def without_disk(domain_xml: str, prefix: str | Sequence[str]) -> str:
    """The definition without the disk ``prefix``'s arguments (and the key object once no disk needs it)."""
    root = _parse(domain_xml)
    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    if cmd is None:
        return _serialize(root)
    for option, value in _pairs(cmd):
        if _owned(_arg_id(str(value.get("value"))), prefix):
            cmd.remove(option)
            cmd.remove(value)
    remaining = [_arg_id(str(v.get("value"))) for _, v in _pairs(cmd)]
    if not any(i.startswith("hl-") for i in remaining):
        for option, value in _pairs(cmd):
            if _arg_id(str(value.get("value"))) == KEY_OBJECT:
                cmd.remove(option)
                cmd.remove(value)
    if len(cmd) == 0:
        root.remove(cmd)
    return _serialize(root)


def with_disk(domain_xml: str, prefix: str | Sequence[str], argv: Sequence[str]) -> str:
    """The definition with the disk ``prefix``'s arguments replaced by ``argv`` (``-object`` key first)."""
    from lxml import etree

    root = _parse(without_disk(domain_xml, prefix))
    cmd = _commandline(root)
    have_key = any(_arg_id(str(v.get("value"))) == KEY_OBJECT for _, v in _pairs(cmd))
    for i in range(0, len(argv) - 1, 2):
        if have_key and _arg_id(argv[i + 1]) == KEY_OBJECT:
            continue
        etree.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=argv[i])
        etree.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=argv[i + 1])
    return _serialize(root)
