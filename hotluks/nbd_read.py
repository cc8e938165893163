"""Read the first bytes of an NBD (or iSCSI) volume through QEMU's own client, for preflight.

Runs ``qemu-img dd`` with ``--image-opts`` built from the parsed ``<source>`` — the
same ``nbd``/``iscsi`` driver options the plan gives the VM — into a private temporary
directory, so the header is checked exactly as QEMU will see it. TLS (nbd ``tls='yes'``)
uses the same x509 client directory as the VM's ``tls-creds-x509`` object. A CHAP
password reaches ``qemu-img`` through a ``secret`` object reading a memory-only file
(:mod:`hotluks.memfile`), never argv or a file on a disk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from typing import TYPE_CHECKING

from hotluks.errors import PreflightError
from hotluks.memfile import memory_file

if TYPE_CHECKING:
    from hotluks.model import Source

QEMU_IMG = "qemu-img"


class NetworkReadError(PreflightError):
    """The NBD/iSCSI volume could not be read (server down, TLS refused, no such export, auth)."""


def _opts(pairs: list[tuple[str, str]]) -> str:
    """QEMU's ``key=value,…`` syntax (commas in values doubled)."""
    return ",".join(f"{k}={v.replace(',', ',,')}" for k, v in pairs)


def image_opts(source: Source, *, tls_id: str | None = None, secret_id: str | None = None) -> str:
    """``--image-opts`` for a raw view of an nbd/iscsi ``<source>`` (pure)."""
    pairs = [("driver", "raw"), ("file.driver", str(source.protocol))]
    host = source.hosts[0]
    if source.protocol == "nbd":
        if host.socket is not None:
            pairs += [("file.server.type", "unix"), ("file.server.path", host.socket)]
        else:
            pairs += [("file.server.type", "inet"), ("file.server.host", str(host.name)),
                      ("file.server.port", str(host.port or 10809))]
        if source.name:
            pairs.append(("file.export", source.name))
        if tls_id is not None:
            pairs.append(("file.tls-creds", tls_id))
            if source.tls_hostname:
                pairs.append(("file.tls-hostname", source.tls_hostname))
    elif source.protocol == "iscsi":
        iqn, lun = str(source.name).rsplit("/", 1)
        pairs += [("file.transport", "tcp"), ("file.portal", f"{host.name}:{host.port or 3260}"),
                  ("file.target", iqn), ("file.lun", lun)]
        if source.auth is not None and secret_id is not None:
            pairs += [("file.user", source.auth.username), ("file.password-secret", secret_id)]
    else:
        raise ValueError(f"not an nbd/iscsi source: {source.describe()}")
    return _opts(pairs)


def read_network_head(source: Source, length: int, *, tls_dir: str | None = None, password: bytes | None = None,
                      timeout: float = 60.0) -> bytes:
    """The first ``length`` bytes of an nbd/iscsi volume (fewer if it is smaller).

    ``tls_dir`` holds ``ca-cert.pem``, ``client-cert.pem`` and ``client-key.pem`` (needed
    when the source has ``tls='yes'``); ``password`` is the iSCSI CHAP secret.
    Raises :class:`NetworkReadError`.
    """
    with tempfile.TemporaryDirectory(prefix="hotluks-netread-") as tmp, contextlib.ExitStack() as stack:
        args = [QEMU_IMG, "dd", "--image-opts"]
        pass_fds: tuple[int, ...] = ()
        tls_id = secret_id = None
        if source.tls:
            if tls_dir is None:
                raise NetworkReadError(f"cannot read {source.describe()}: tls='yes' needs the x509 client directory")
            tls_id = "hl-read-tls"
            args += ["--object", "tls-creds-x509," + _opts([("id", tls_id), ("dir", tls_dir), ("endpoint", "client")])]
        if password is not None:
            secret_id = "hl-read-auth"
            path, fd = stack.enter_context(memory_file(password, "hotluks-iscsi-auth"))  # never on a disk
            pass_fds = (fd,)
            args += ["--object", "secret," + _opts([("id", secret_id), ("file", path)])]
        out = os.path.join(tmp, "head")
        block = 1 << 20
        args += [f"if={image_opts(source, tls_id=tls_id, secret_id=secret_id)}", f"of={out}", f"bs={block}",
                 f"count={-(-length // block)}"]
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  pass_fds=pass_fds)
        except FileNotFoundError:
            raise NetworkReadError(f"cannot read {source.describe()}: {QEMU_IMG} is not installed "
                                   "(Debian package qemu-utils)") from None
        except subprocess.TimeoutExpired:
            raise NetworkReadError(f"reading {source.describe()} timed out after {timeout:.0f}s") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
            detail = lines[-1] if lines else f"{QEMU_IMG} exited with status {proc.returncode}"
            raise NetworkReadError(f"cannot read {source.describe()}: {detail}")
        with open(out, "rb") as f:
            return f.read(length)
