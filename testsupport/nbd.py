"""Test fixtures: x509 credentials made with openssl, and a header NBD server (qemu-nbd).

The server runs the recipe ``hotluks header serve`` runs (:mod:`hotluks.headers.serve`):
``qemu-nbd --snapshot`` exports a
throwaway writable overlay in front of the header file (QEMU's luks driver insists on
write permission on its header), so no client can change the header file itself; TLS with
``verify-peer`` and an ``authz-simple`` object admit exactly one client certificate DN.
It listens on 127.0.0.1 or on a UNIX socket and is ended by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')[-500:]}")


@dataclass(frozen=True)
class X509Set:
    """A CA, one server directory and client directories by common name (QEMU's file names)."""

    root: Path
    server: Path
    clients: dict[str, Path]

    def client(self, cn: str) -> Path:
        return self.clients[cn]


def _issue(root: Path, where: Path, role: str, cn: str, usage: str, san: str | None) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / "ca-cert.pem").write_bytes((root / "ca-cert.pem").read_bytes())
    key, csr, ext = where / f"{role}-key.pem", where / f"{role}.csr", where / f"{role}.ext"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={cn}")
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}"] + ([f"subjectAltName={san}"] if san else [])
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(root / "ca-cert.pem"), "-CAkey", str(root / "ca-key.pem"),
             "-CAcreateserial", "-out", str(where / f"{role}-cert.pem"), "-days", "2", "-extfile", str(ext))
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)


def make_x509(root: Path, clients: tuple[str, ...]) -> X509Set:
    """A fresh CA under ``root``, a server certificate for 127.0.0.1/localhost, and one client per CN."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(root / "ca-key.pem"), "-out", str(root / "ca-cert.pem"), "-days", "2",
             "-subj", "/CN=hotluks test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _issue(root, root / "server", "server", "localhost", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    dirs = {}
    for cn in clients:
        dirs[cn] = root / f"client-{cn}"
        _issue(root, dirs[cn], "client", cn, "clientAuth", None)
    return X509Set(root, root / "server", dirs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NbdServer:
    """A running ``qemu-nbd`` exporting one image; ``stop()`` ends it by PID."""

    pid: int
    export: str
    port: int | None = None
    socket_path: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)

    def host_xml(self) -> str:
        if self.socket_path is not None:
            return f"<host transport='unix' socket='{self.socket_path}'/>"
        return f"<host name='127.0.0.1' port='{self.port}'/>"


def serve_header(image: Path, workdir: Path, *, export: str = "hdr", tls: X509Set | None = None,
                 allow_dn: str | None = None, unix: bool = False) -> NbdServer:
    """Start ``qemu-nbd --snapshot`` for ``image`` (raw) on 127.0.0.1 or a UNIX socket under ``workdir``.

    With ``tls``, clients must present a certificate of that CA; with ``allow_dn``
    (e.g. ``"CN=vm-1"``) only that distinguished name is admitted.
    """
    from hotluks.headers.serve import serve_argv

    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / f"qemu-nbd-{export}.pid"
    port = sock = None
    if unix:
        sock = workdir / f"{export}.sock"
    else:
        port = free_port()
    args = serve_argv(str(image), tls_dir=str(tls.server) if tls else None, allow_dn=allow_dn, export=export,
                      port=port or 0, socket=str(sock) if sock else None, fork=True, pid_file=str(pidfile))
    proc = subprocess.run(args, capture_output=True, timeout=30)  # --fork: returns when serving
    if proc.returncode != 0:
        raise RuntimeError(f"qemu-nbd failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return NbdServer(int(pidfile.read_text().strip()), export, port, sock)
