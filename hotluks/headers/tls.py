"""Where hotluks finds x509 client credentials for NBD over TLS.

Like libvirt's ``nbd_tls_x509_cert_dir`` in qemu.conf (default ``/etc/pki/qemu``): one
directory holding ``ca-cert.pem``, ``client-cert.pem`` and ``client-key.pem``, used by
the VM's ``tls-creds-x509`` object and by preflight's own NBD read. Set it with the
``HOTLUKS_NBD_TLS_DIR`` environment variable.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_NBD_TLS_DIR = "/etc/pki/qemu"
ENV = "HOTLUKS_NBD_TLS_DIR"


def nbd_tls_dir() -> str:
    """The x509 client directory for nbd ``tls='yes'`` sources (environment, else libvirt's default)."""
    return os.environ.get(ENV) or DEFAULT_NBD_TLS_DIR


def add_option(parser: argparse.ArgumentParser) -> None:
    """``--nbd-tls-dir DIR`` (sets ``HOTLUKS_NBD_TLS_DIR`` for this command)."""
    parser.add_argument("--nbd-tls-dir", metavar="DIR", default=None,
                        help=f"x509 client credentials for nbd tls='yes' (ca-cert.pem, client-cert.pem, "
                             f"client-key.pem); default ${ENV} or {DEFAULT_NBD_TLS_DIR}")


def apply_option(args: argparse.Namespace) -> None:
    """Make ``--nbd-tls-dir`` the directory :func:`nbd_tls_dir` returns in this process."""
    if getattr(args, "nbd_tls_dir", None):
        os.environ[ENV] = os.path.abspath(args.nbd_tls_dir)
