"""libvirt secrets and libvirt's per-domain master key, through both backends."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import MasterKey, QMPCommandError
from hotluks.backends.select import open_backend
from testsupport.libvirtd import TransientDomain, define_secret, give_to_qemu, qemu_accessible_dir

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]
PASSPHRASE = b"hotluks-Secret-\xc3\xa9-pass"


def seal(plain: bytes, key: bytes, iv: bytes) -> tuple[str, str]:
    """AES-256-CBC with PKCS#7 padding, as libvirt encrypts secrets for QEMU: (data, iv) base64."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    return base64.b64encode(ct).decode(), base64.b64encode(iv).decode()


def sealed_secret(obj_id: str, plain: bytes, key: MasterKey, iv: bytes) -> dict[str, Any]:
    data, iv64 = seal(plain, key.key, iv)
    return {"qom-type": "secret", "id": obj_id, "data": data, "format": "base64", "keyid": key.keyid, "iv": iv64}


def test_secret_value_by_uuid_and_usage(domain: TransientDomain, libvirt_uri: str, backend_name: str,
                                        arun: Run, capfd: pytest.CaptureFixture[str]) -> None:
    ceph_key = os.urandom(16)
    with define_secret(libvirt_uri, "volume", "/var/lib/hotluks/test-volume.img", PASSPHRASE) as vol, \
            define_secret(libvirt_uri, "ceph", "client.hotluks-test", ceph_key) as ceph:

        async def main() -> list[bytes | None]:
            async with await open_backend(domain.name, uri=libvirt_uri, backend=backend_name) as backend:
                return [await backend.secret_value(vol.uuid), await backend.secret_value(vol.uuid.upper()),
                        await backend.secret_value("/var/lib/hotluks/test-volume.img"),
                        await backend.secret_value(ceph.uuid), await backend.secret_value("client.hotluks-test"),
                        await backend.secret_value("00000000-0000-4000-8000-000000000000"),
                        await backend.secret_value("/no/such/usage")]

        values = arun(main())
    assert values == [PASSPHRASE, PASSPHRASE, PASSPHRASE, ceph_key, ceph_key, None, None]
    out, err = capfd.readouterr()
    assert "Secret-" not in out + err and base64.b64encode(PASSPHRASE).decode() not in out + err


def _qemu_master_key_file(domain: TransientDomain) -> Path:
    pid = domain.qemu_pid()
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    objects = [json.loads(argv[i + 1]) for i, arg in enumerate(argv[:-1])
               if arg == "-object" and argv[i + 1].startswith("{")]
    (secret,) = [o for o in objects if o.get("id") == "masterKey0"]
    assert secret["qom-type"] == "secret" and secret["format"] == "raw"
    return Path(secret["file"])


def test_master_key_is_the_one_qemu_was_started_with(domain: TransientDomain, backend_name: str,
                                                     arun: Run) -> None:
    async def main() -> MasterKey | None:
        async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
            return backend.master_key

    key = arun(main())
    assert key is not None and key.keyid == "masterKey0" and len(key.key) == 32
    path = _qemu_master_key_file(domain)
    # libvirt's per-domain directory: domain-<id>-<name cut to 20 characters>
    assert path.name == "master-key.aes" and path.parent.name.endswith(f"-{domain.name[:20]}")
    assert key.key == path.read_bytes()
    assert "bytes>" in repr(key) and key.key.hex() not in repr(key)


def test_master_key_decrypts_secrets_in_qemu(domain: TransientDomain, backend_name: str, arun: Run,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """A secret sealed under masterKey0 opens a LUKS image; other keys or passphrases do not.

    Several wrong keys, so some fail at object-add (bad padding) and the rest at the LUKS open.
    """
    with qemu_accessible_dir() as workdir:
        keyfile = workdir / "pass"
        keyfile.write_bytes(PASSPHRASE)
        image = workdir / "luks.img"
        subprocess.run(["qemu-img", "create", "-q", "-f", "luks", "--object", f"secret,id=k,file={keyfile}",
                        "-o", "key-secret=k,iter-time=10", str(image), "4M"], check=True)
        keyfile.unlink()
        give_to_qemu(image)

        async def main() -> dict[str, Any]:
            results: dict[str, Any] = {}
            async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
                key = backend.master_key
                assert key is not None
                wrong = MasterKey(key.keyid, bytes(b ^ 0x5A for b in key.key))
                await backend.execute("blockdev-add", {"driver": "file", "filename": str(image),
                                                       "node-name": "hl-k-file"})
                cases = [("right", sealed_secret("hl-k-s1", PASSPHRASE, key, b"\x11" * 16)),
                         ("wrong-pass", sealed_secret("hl-k-s3", b"not it", key, b"\x33" * 16))]
                cases += [(f"wrong-key-{i}", sealed_secret(f"hl-k-w{i}", PASSPHRASE, k, os.urandom(16)))
                          for i, k in enumerate([wrong] + [MasterKey(key.keyid, os.urandom(32)) for _ in range(5)])]
                for label, secret in cases:
                    try:
                        await backend.execute("object-add", secret)
                    except QMPCommandError as exc:
                        results[label] = ("object-add", exc.desc)
                        continue
                    try:
                        await backend.execute("blockdev-add", {"driver": "luks", "file": "hl-k-file",
                                                               "key-secret": secret["id"], "node-name": "hl-k-luks"})
                    except QMPCommandError as exc:
                        results[label] = ("blockdev-add", exc.desc)
                    else:
                        results[label] = ("opened", None)
                        await backend.execute("blockdev-del", {"node-name": "hl-k-luks"})
                    await backend.execute("object-del", {"id": secret["id"]})
                await backend.execute("blockdev-del", {"node-name": "hl-k-file"})
            return results

        results = arun(main())
    assert results["right"] == ("opened", None)
    # QEMU decrypts at object-add but only checks that the last byte is a plausible pad length
    # (about 1 wrong key in 15 passes for a one-block secret); the LUKS open is the real proof
    wrong_keys = [v for k, v in results.items() if k.startswith("wrong-key-")]
    assert len(wrong_keys) == 6 and all(where in ("object-add", "blockdev-add") for where, _ in wrong_keys), wrong_keys
    assert results["wrong-pass"][0] == "blockdev-add" and "password" in results["wrong-pass"][1].lower()
    out, err = capfd.readouterr()
    assert "Secret-" not in out + err


def test_commands_never_put_secrets_in_argv(domain: TransientDomain, backend_name: str, arun: Run,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """While plain-text secrets go through the backend, no process's argv carries them."""
    import threading

    marker = b"hotluks-argv-canary-\xe2\x98\x83"
    data = base64.b64encode(marker).decode()
    stop = threading.Event()
    seen: list[str] = []
    scans = [0]

    def scan() -> None:
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    argv = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if marker in argv or data.encode() in argv:
                    seen.append(proc.name)
            scans[0] += 1

    async def main() -> None:
        async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
            for i in range(8):
                await backend.execute("object-add", {"qom-type": "secret", "id": f"hl-argv{i}", "data": data,
                                                     "format": "base64"})
                await backend.execute("object-del", {"id": f"hl-argv{i}"})

    watcher = threading.Thread(target=scan, daemon=True)
    watcher.start()
    try:
        arun(main())
    finally:
        stop.set()
        watcher.join()
    assert scans[0] > 0 and not seen
    out, err = capfd.readouterr()
    assert data not in out + err


def test_private_secret_is_a_clear_secret_error(domain: TransientDomain, libvirt_uri: str, backend_name: str,
                                                arun: Run) -> None:
    from hotluks.errors import SecretError

    with define_secret(libvirt_uri, "volume", "/var/lib/hotluks/private.img", PASSPHRASE, private=True) as sec:

        async def main() -> None:
            async with await open_backend(domain.name, uri=libvirt_uri, backend=backend_name) as backend:
                await backend.secret_value(sec.uuid)

        with pytest.raises(SecretError, match="private") as info:
            arun(main())
    assert info.value.exit_code == 2 and "Secret-" not in str(info.value)
