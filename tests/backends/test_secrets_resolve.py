"""One resolver finds every secret value: given by uuid or usage, else from the backend's store."""

from __future__ import annotations

import asyncio
import base64

import pytest

from hotluks.errors import SecretError
from hotluks.plan.steps import SecretBinding
from hotluks.secrets import SecretRef, SecretValue, resolve

UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
PASS = SecretBinding(SecretRef("passphrase", uuid=UUID))
CEPH = SecretBinding(SecretRef("ceph", usage="client.admin"), encoding="base64")
CEPH_KEY = bytes(range(16))


class Store:
    """A libvirt-like store: holds a Ceph key decoded, as libvirt does."""

    name = "libvirt"
    stores_secrets = True

    def __init__(self, values: dict[str, bytes]):
        self.values = values
        self.asked: list[str] = []

    async def secret_value(self, ref: str) -> bytes | None:
        self.asked.append(ref)
        return self.values.get(ref)


def test_given_values_win_and_the_store_fills_the_rest() -> None:
    store = Store({"client.admin": CEPH_KEY, UUID: b"from-libvirt"})
    values = asyncio.run(resolve([PASS, CEPH], {UUID: SecretValue(b"given")}, store))
    assert values[UUID].value == b"given"
    assert values["client.admin"].value == base64.b64encode(CEPH_KEY)  # the representation users hold
    assert store.asked == ["client.admin"]


def test_missing_value_names_the_flag_and_the_store() -> None:
    with pytest.raises(SecretError, match=f"--secret {UUID}=FILE or define it as a libvirt secret"):
        asyncio.run(resolve([PASS], {}, Store({})))
    with pytest.raises(SecretError, match=r"--secret client.admin=FILE$"):
        asyncio.run(resolve([CEPH], {}, None))
