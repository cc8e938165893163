"""The header-server recipe: ``qemu-nbd`` arguments that serve a detached header safely. Pure.

- ``--snapshot``: clients write to a throwaway overlay (QEMU's luks driver insists on write
  permission on its header, and QEMU's NBD client refuses a read-only export for a writable
  node), so the header file itself is only ever read;
- TLS with ``verify-peer``: clients need a certificate of the server's CA;
- ``authz-simple``: only the named client certificate DN (e.g. ``CN=host-1``) is admitted;
- ``--persistent --shared``: preflight's read and the VM's connection may overlap.
"""

from __future__ import annotations


def _esc(value: str) -> str:
    return value.replace(",", ",,")


def serve_argv(image: str, *, tls_dir: str | None, allow_dn: str | None, export: str = "hdr",
               host: str = "127.0.0.1", port: int = 10809, socket: str | None = None, fork: bool = False,
               pid_file: str | None = None, shared: int = 8) -> list[str]:
    """``qemu-nbd`` argv serving ``image`` (raw) read-only behind a throwaway overlay."""
    if allow_dn is not None and tls_dir is None:
        raise ValueError("client authorisation by certificate DN needs TLS (tls_dir)")
    args = ["qemu-nbd", "--persistent", "--shared", str(shared), "--snapshot", "-f", "raw", "-x", export]
    if fork:
        args.append("--fork")
    if pid_file is not None:
        args += ["--pid-file", pid_file]
    if tls_dir is not None:
        args += ["--object", f"tls-creds-x509,id=hl-srv-tls,dir={_esc(tls_dir)},endpoint=server,verify-peer=on",
                 "--tls-creds", "hl-srv-tls"]
    if allow_dn is not None:
        args += ["--object", f"authz-simple,id=hl-srv-authz,identity={_esc(allow_dn)}", "--tls-authz", "hl-srv-authz"]
    if socket is not None:
        args += ["-k", socket]
    else:
        args += ["-b", host, "-p", str(port)]
    return [*args, image]
