"""Parse a libvirt-style ``<disk>`` into a :class:`hotluks.model.Disk` (the class is passed in).

Hardened against hostile input: size limit, no DTD, no entity expansion, no
network. Every input is validated against ``xml/disk.rng``; semantic rules the
grammar cannot express are checked afterwards. Every error is an
:class:`~hotluks.errors.XMLError` naming the line.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Any

from hotluks.errors import InvalidDisk, XMLError
from hotluks.xmlbuild import SUPPORTED_BUSES as SUPPORTED_BUSES
from hotluks.xmlbuild import D, DiskBuilder, line_of, same_volume

if TYPE_CHECKING:
    from lxml import etree

MAX_XML_BYTES = 256 * 1024


@functools.cache
def _schema() -> etree.RelaxNG:
    from lxml import etree

    # a plain path, not importlib.resources: it would import zipfile on every start-up
    with open(os.path.join(os.path.dirname(__file__), "schema", "disk.rng"), "rb") as fh:
        return etree.RelaxNG(etree.parse(fh, _parser()))


def _parser() -> etree.XMLParser:
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_comments=True, remove_pis=True,
    )


def read_disk_file(path: str | os.PathLike[str], make: type[D]) -> D:
    """Read and parse a ``<disk>`` XML file (``-`` is not special here) into a ``make``.

    Only regular files are read: a FIFO, a device or a socket is refused before
    any read could block (the file is opened non-blocking and checked with fstat).
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidDisk(f"{_shown(path)}: {_os_reason(exc)}") from None
    except (UnicodeEncodeError, ValueError):  # lone surrogates, NUL bytes
        raise InvalidDisk(f"{_shown(path)}: not a usable file name") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidDisk(f"{_shown(path)}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidDisk(f"{_shown(path)}: not a regular file (a FIFO, device or socket is never read; "
                             "use '-' for stdin)")
        if info.st_size > MAX_XML_BYTES:
            raise XMLError(f"input is {info.st_size} bytes; a <disk> must be under {MAX_XML_BYTES} bytes",
                           source=_shown(path))
        data = os.read(fd, MAX_XML_BYTES + 1)
    except OSError as exc:
        raise InvalidDisk(f"{_shown(path)}: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    return parse_disk(data, make, source=_shown(path))


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as it may appear in a message: bounded, no control characters."""
    text = str(path).encode("utf-8", "backslashreplace").decode()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 200 else text[:120] + "…" + text[-60:]


def _os_reason(exc: OSError) -> str:
    """A short reason for an OSError (ENOENT → 'no such file'), never a traceback."""
    import errno

    reasons = {errno.ENOENT: "no such file", errno.EISDIR: "is a directory", errno.EACCES: "permission denied",
               errno.ENAMETOOLONG: "file name too long", errno.ELOOP: "too many levels of symbolic links",
               errno.ENOTDIR: "a component of the path is not a directory"}
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def parse_disk(data: str | bytes, make: type[D], *, source: str | None = None) -> D:
    """Parse ``<disk>`` XML text into a validated ``make`` (:class:`hotluks.model.Disk`; the model
    module is not imported here: ``Disk.from_xml`` calls this)."""
    from lxml import etree

    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeEncodeError:
            raise XMLError("input text is not valid Unicode (lone surrogates)", source=source) from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise InvalidDisk(f"a <disk> is XML text, bytes or a path, not {type(data).__name__}")
    if len(raw) > MAX_XML_BYTES:
        raise XMLError(f"input is {len(raw)} bytes; a <disk> must be under {MAX_XML_BYTES} bytes", source=source)
    if not raw.strip():
        raise XMLError("input is empty; expected a <disk> element", source=source)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        message = " ".join(str(exc.msg).split())  # libxml2 messages may carry newlines
        raise XMLError(f"not well-formed XML: {message}", line=line, source=source) from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XMLError("DOCTYPE declarations (and so entities) are not allowed", line=1, source=source)
    if not isinstance(root.tag, str) or root.tag != "disk":
        raise XMLError(f"root element must be <disk>, not <{root.tag}>", line=line_of(root), source=source)
    _explain_common_mistakes(root, source)
    schema = _schema()
    if not schema.validate(root):
        line, message = _locate_schema_error(root, schema.error_log)
        raise XMLError(f"does not match the <disk> schema: {message}", line=line, source=source)
    return DiskBuilder(make, source).disk(root)


def _locate_schema_error(root: etree._Element, log: etree._ListErrorLog) -> tuple[int | None, str]:
    """The line and message of the first schema error.

    libxml2 reports a bad element inside an ``<interleave>`` as "Extra element X in
    interleave" without a line; find that element (under the context the next error
    names) and say what is wrong with it.
    """
    errors = list(log)
    first = errors[0]
    if first.line:
        return first.line, first.message
    match = re.match(r"Extra element (\S+) in interleave", first.message)
    if match is None:
        return next((e.line for e in errors if e.line), line_of(root)), first.message
    tag = match.group(1)
    context = next((e.path for e in errors if e.path), None)
    found: Any = root.xpath(context) if context else []
    parent = found[0] if found and isinstance(found[0], type(root)) else root
    candidates = [child for child in parent if child.tag == tag] or list(root.iter(tag))
    if len(candidates) > 1:
        return line_of(candidates[1]), f"<{tag}> may appear only once here"
    line = line_of(candidates[0]) if candidates else line_of(root)
    return line, (f"<{tag}> is not valid here: one of its attributes or children does not match the grammar "
                  "(see xml/disk.rng)")


def _explain_common_mistakes(root: etree._Element, source: str | None) -> None:
    """Friendlier messages than the schema's for mistakes people actually make."""
    for enc in root.iter("encryption"):
        if not any(child.tag == "secret" for child in enc):
            raise XMLError("<encryption> needs at least one <secret type='passphrase' uuid=…|usage=…/>",
                           line=line_of(enc), source=source)
    target = root.find("target")
    if target is not None:
        bus = target.get("bus")
        if bus is not None and bus not in SUPPORTED_BUSES:
            raise XMLError(f"unsupported bus '{bus}' (hotluks plugs disks on {', '.join(SUPPORTED_BUSES)})",
                           line=line_of(target), source=source)
    device = root.get("device", "disk")
    if device != "disk":
        raise XMLError(f"device='{device}' is not supported: hotluks attaches device='disk' only",
                       line=line_of(root), source=source)


__all__ = ["parse_disk", "read_disk_file", "same_volume", "MAX_XML_BYTES"]
