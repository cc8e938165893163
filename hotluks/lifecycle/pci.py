"""The PCI addresses a libvirt domain's persistent definition reserves (read through the backend)."""

from __future__ import annotations

from hotluks.backends.base import MonitorBackend
from hotluks.errors import BackendError
from hotluks.log import get_logger
from hotluks.plan.placement import Reservations, reservations_from_domain_xml

log = get_logger(__name__)


async def pci_reservations(backend: MonitorBackend) -> Reservations:
    """Addresses held by the domain's persistent XML; none for a bare QMP VM.

    An unreadable definition is logged and treated as reserving nothing: the live
    ``query-pci`` view still keeps hotluks off occupied addresses.
    """
    try:
        xml = await backend.persistent_xml()
    except BackendError as exc:
        log.warning("cannot read the persistent definition of %s (%s); placing by the live VM only",
                    backend.vm, exc)
        return Reservations()
    if not xml:
        return Reservations()
    try:
        return reservations_from_domain_xml(xml)
    except (ValueError, SyntaxError) as exc:  # lxml's XMLSyntaxError is a SyntaxError
        log.warning("unparsable persistent definition of %s (%s); placing by the live VM only", backend.vm, exc)
        return Reservations()
