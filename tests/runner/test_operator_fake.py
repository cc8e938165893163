"""Operator semantics on the fake QEMU: idempotence, identity, pending unplugs, the journal as a trust
boundary (forged and corrupt records, symlinks, untrusted state directories), typed JSON results,
dry runs that equal what is sent, interruptions during rollback, status without the lock."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import VMIdentity
from hotluks.errors import ConflictError, IncompleteError, RefusedError, RolledBackError
from hotluks.runner import admission
from hotluks.runner.journal import Journal, vm_dirname
from hotluks.runner.lock import vm_lock
from hotluks.runner.operator import Operator
from hotluks.runner.statedir import UntrustedStateDirError
from hotluks.runner.transaction import UnplugPendingError
from testsupport.fakeqemu import FakeQemu
from testsupport.faultmatrix import Case, FaultInjector, journal_failing_at

from .fakedisks import SECRETS, SHAPES, make

MUTATING = {"object-add", "object-del", "blockdev-add", "blockdev-del", "device_add", "device_del", "add-fd",
            "remove-fd"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _names(fake: FakeQemu) -> tuple[set[str], set[str], set[str], set[int]]:
    st = fake.state
    return set(st.nodes), set(st.objects), set(st.devices), set(st.fdsets)


def test_attach_is_idempotent_and_detach_of_absent_succeeds(tmp_path: Path) -> None:
    fake = FakeQemu()
    disk = make(tmp_path, "detached-header-qcow2")
    other = make(tmp_path, "attached-luks", name="other")

    async def go() -> None:
        op = Operator(fake, state_dir=tmp_path / "s")
        first = await op.attach(disk, SECRETS, preflight=False)
        sent = len(fake.log)
        again = await op.attach(disk, SECRETS, preflight=False)
        assert again.already_attached and not first.already_attached and again.device == first.device
        assert again["top_node"] == first.top_node == "hl-vdb-luks"
        assert not [c for c, _ in fake.log[sent:] if c in MUTATING]
        with pytest.raises(ConflictError, match="another disk"):
            await op.attach(other, SECRETS, preflight=False)
        gone = await op.detach("vdb")
        assert not gone.already_absent and "device_del hl-vdb" in gone.removed
        absent = await op.detach("vdb")
        assert absent.already_absent and absent.removed == ()
        for result in (first, again, gone, absent):
            doc = json.loads(json.dumps(result))
            assert doc == result.to_json() and all("-" not in key for key in doc)
    run(go())


def test_records_follow_the_vm_not_the_socket_and_a_new_instance_makes_them_lost(tmp_path: Path) -> None:
    key = VMIdentity("qemu-pid-4242-start-99", "instance-a")
    first = FakeQemu(vm="/run/a.qmp", identity=key)
    disk = make(tmp_path, "attached-luks")

    async def go() -> None:
        await Operator(first, state_dir=tmp_path / "s").attach(disk, SECRETS, preflight=False)
        second = FakeQemu(vm="/run/b.qmp", identity=key)  # another socket of the same QEMU
        second.state = first.state
        (entry,) = await Operator(second, state_dir=tmp_path / "s").status()
        assert (entry.target, entry.status, entry.consistent) == ("vdb", "attached", True)
        restarted = FakeQemu(vm="/run/a.qmp", identity=VMIdentity(key.key, "instance-b"))  # QEMU restarted
        op = Operator(restarted, state_dir=tmp_path / "s")
        (entry,) = await op.status()
        assert entry.status == "lost" and not entry.consistent and not any(i.present for i in entry.components)
        (action,) = await op.repair()
        assert action.action == "lost"  # kept: it says what to plug again
        again = await op.attach(disk, SECRETS, preflight=False)  # re-plugs, replacing the old record
        assert not again.already_attached and "hl-vdb" in restarted.state.devices
        (entry,) = await op.status()
        assert (entry.status, entry.consistent) == ("attached", True)
    run(go())


def test_detach_of_a_paused_guest_is_pending_and_repair_finishes_it(tmp_path: Path) -> None:
    fake = FakeQemu()
    disk = make(tmp_path, "detached-header-raw")

    async def go() -> None:
        op = Operator(fake, state_dir=tmp_path / "s")
        await op.attach(disk, SECRETS, preflight=False)
        fake.guest = "paused"
        with pytest.raises(UnplugPendingError, match="repair") as info:
            await op.detach("vdb", timeout=0.3)
        assert info.value.exit_code == 3 and isinstance(info.value, IncompleteError)
        (entry,) = await op.status()
        assert entry.status == "detaching" and entry.needs_repair
        assert "hl-vdb-luks" in fake.state.nodes  # nothing deleted under the device
        fake.cont()
        (action,) = await op.repair()
        assert action.action == "finished detach"
        assert await op.status() == [] and not any(n.startswith("hl-") for n in fake.state.nodes)
    run(go())


def _forge(state: Path, key: str, target: str, doc: dict[str, Any]) -> Path:
    journal = Journal(state, key)
    journal.ensure()
    path = journal.path(target)
    path.write_text(json.dumps(doc))
    return path


FORGED = {"vm": "x", "target": "vdb", "device": "pc.ram", "shape": "attached-luks", "status": "needs-repair",
          "steps": [{"kind": "device", "role": "device", "name": "pc.ram", "execute": "device_add",
                     "arguments": {"id": "pc.ram"},
                     "undo": {"execute": "migrate", "arguments": {"uri": "exec:id > /tmp/pwned"}}}]}


def test_a_forged_record_never_sends_its_undo_and_blocks_only_its_target(tmp_path: Path) -> None:
    fake = FakeQemu()
    state = tmp_path / "s"
    path = _forge(state, fake.vm_key, "vdb", FORGED)

    async def go() -> None:
        op = Operator(fake, state_dir=state)
        (entry,) = await op.status()
        assert entry.status == "corrupt" and entry.needs_repair and "pc.ram" in str(entry.error)
        with pytest.raises(RefusedError, match="corrupt"):
            await op.attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False)
        with pytest.raises(RefusedError, match="corrupt"):
            await op.detach("vdb")
        ok = await op.attach(make(tmp_path, "attached-luks", "vdc", name="c"), SECRETS, preflight=False)
        assert ok.device == "hl-vdc"  # another target of the same VM is not blocked
        actions = await op.repair()
        assert [(a.target, a.action) for a in actions] == [("vdb", "quarantined")]
        assert not path.exists() and list(path.parent.glob("vdb.json.quarantined-*"))
        assert [s.target for s in await op.status()] == ["vdc"]
        await op.attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False)  # its target is usable again
    run(go())
    assert not [c for c, _ in fake.log if c not in MUTATING and not c.startswith(("query", "qom"))]
    assert "pc.ram" in fake.state.objects and not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("forgery", [
    {"steps": [{"kind": "node", "role": "x", "name": "libvirt-1-format", "execute": "blockdev-add",
                "arguments": {"node-name": "libvirt-1-format"}}]},  # a name hotluks never gives
    {"steps": [{"kind": "node", "role": "x", "name": "hl-vdb-luks", "execute": "migrate",
                "arguments": {"node-name": "hl-vdb-luks"}}]},  # a command no step kind has
    {"steps": [{"kind": "fd", "role": "x", "name": "fdset-0", "execute": "add-fd",
                "arguments": {"fdset-id": 0, "opaque": "libvirt"}}]},  # an fdset hotluks did not tag
    {"status": "rm -rf /"},
])
def test_records_are_checked_against_the_schema(tmp_path: Path, forgery: dict[str, Any]) -> None:
    fake = FakeQemu()
    doc = {**FORGED, "device": "hl-vdb",
           "steps": [{"kind": "device", "role": "device", "name": "hl-vdb", "execute": "device_add",
                      "arguments": {"id": "hl-vdb"}}], **forgery}
    _forge(tmp_path / "s", fake.vm_key, "vdb", doc)
    (entry,) = run(Operator(fake, state_dir=tmp_path / "s").status())
    assert entry.status == "corrupt"


def test_the_journal_never_follows_links_and_refuses_untrusted_directories(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    fake = FakeQemu()
    state = tmp_path / "s"
    journal = Journal(state, fake.vm_key)
    journal.ensure()
    journal.path("vdb").symlink_to(victim)
    (entry,) = run(Operator(fake, state_dir=state).status())
    assert entry.status == "corrupt" and "safely" in str(entry.error)
    run(Operator(fake, state_dir=state).repair())  # quarantines the link itself
    run(Operator(fake, state_dir=state).attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False))
    assert victim.read_text() == "precious" and not journal.path("vdb").is_symlink()
    os.chmod(state, 0o777)
    with pytest.raises(UntrustedStateDirError, match="writable by group or others"):
        run(Operator(FakeQemu(), state_dir=state).detach("vdb"))
    os.chmod(state, 0o700)
    os.chmod(journal.dir, 0o770)
    with pytest.raises(UntrustedStateDirError):
        run(Operator(fake, state_dir=state).status())
    os.chmod(journal.dir, 0o700)
    if os.geteuid() == 0:
        os.chown(state, 65534, 65534)
        with pytest.raises(UntrustedStateDirError, match="owned by uid 65534"):
            run(Operator(fake, state_dir=state).detach("vdb"))


def test_vm_directories_are_named_by_identity(tmp_path: Path) -> None:
    fake = FakeQemu(identity=VMIdentity("libvirt-uuid-1234", "i"))
    run(Operator(fake, state_dir=tmp_path).attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False))
    assert (tmp_path / vm_dirname("libvirt-uuid-1234") / "vdb.json").is_file()


@pytest.mark.parametrize("fds", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_dry_run_prints_exactly_what_a_real_run_sends(tmp_path: Path, shape: str, fds: bool) -> None:
    fake = FakeQemu(passes_fds=fds)
    disk = make(tmp_path, shape)

    async def go() -> None:
        op = Operator(fake, state_dir=tmp_path / "s")
        dry = await op.attach(disk, SECRETS, preflight=False, dry_run=True)
        assert not [c for c, _ in fake.log if c in MUTATING]
        start = len(fake.log)
        await op.attach(disk, SECRETS, preflight=False)
        sent = [{"execute": c, "arguments": a} for c, a in fake.log[start:] if c in MUTATING]
        for command in sent:
            if command["execute"] == "object-add":
                command["arguments"].update(data="<redacted>", format="base64")
        redacted = [json.loads(json.dumps(c).replace(json.dumps(c["arguments"].get("data", "")), '"<redacted>"'))
                    for c in dry.commands]
        assert sent == redacted
        if fds:
            # one per file node, and the migration guard's (libvirt backends), which comes first
            assert [c["execute"] for c in dry.commands].count("add-fd") == (3 if "detached" in shape else 2)
            assert dry.commands[1]["arguments"]["node-name"] == "hlg-vdb"
            assert all(c["arguments"].get("filename", "/dev/fdset/").startswith("/dev/fdset/")
                       for c in dry.commands if c["arguments"].get("driver") == "file")
        assert b"fake-passphrase" not in json.dumps(dry.to_json()).encode()
    run(go())


def test_a_second_interruption_during_rollback_does_not_stop_it(tmp_path: Path) -> None:
    fake = FakeQemu()
    disk = make(tmp_path, "detached-header-qcow2")

    main: list[asyncio.Task[Any]] = []

    class Nagging(FaultInjector):
        async def execute(self, command: str, arguments: Any = None) -> Any:
            if self.failed and command == "blockdev-del":
                asyncio.get_running_loop().call_soon(main[0].cancel)  # SIGINT again, mid-undo
            return await super().execute(command, arguments)

    async def go() -> None:
        task = asyncio.current_task()
        assert task is not None
        main.append(task)
        before = _names(fake)
        op = Operator(Nagging(fake, Case("fail-after", 6)), state_dir=tmp_path / "s")
        with pytest.raises(RolledBackError, match="as before"):
            await op.attach(disk, SECRETS, preflight=False)
        assert _names(fake) == before
    run(go())


def test_a_disk_that_stays_full_ends_in_rollback(tmp_path: Path) -> None:
    fake = FakeQemu()

    async def go() -> None:
        before = _names(fake)
        with journal_failing_at(4, onwards=True):
            with pytest.raises(RolledBackError, match="No space left") as info:
                await Operator(fake, state_dir=tmp_path / "s").attach(make(tmp_path, "attached-luks"), SECRETS,
                                                                      preflight=False)
        assert "repair` removes the stale record" in str(info.value) and _names(fake) == before
        (action,) = await Operator(fake, state_dir=tmp_path / "s").repair()
        assert action.action == "rolled back interrupted attach" and action.undone == ()
    run(go())


def test_status_takes_no_lock_and_preflight_runs_before_the_lock(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeQemu()
    disk = make(tmp_path, "attached-luks")
    free: list[bool] = []

    async def preflight(*args: Any, **kwargs: Any) -> str:
        async with vm_lock(Journal(tmp_path / "s", fake.vm_key).dir, 0.2):
            free.append(True)  # nobody holds the VM lock while the header is checked
        return "checked (fake)"

    monkeypatch.setattr(admission, "run_preflight", preflight)

    async def go() -> None:
        op = Operator(fake, state_dir=tmp_path / "s")
        result = await op.attach(disk, SECRETS)
        assert result.preflight == "checked (fake)" and free == [True]
        async with vm_lock(Journal(tmp_path / "s", fake.vm_key).dir, 1):
            (entry,) = await asyncio.wait_for(op.status(), 1)  # does not wait for the lock
        assert entry.status == "attached"
    run(go())


def test_incomplete_rollback_is_exit_3_with_a_record(tmp_path: Path) -> None:
    fake = FakeQemu()

    async def go() -> None:
        op = Operator(FaultInjector(fake, Case("undo-fails", 4, "blockdev-del")), state_dir=tmp_path / "s")
        with pytest.raises(IncompleteError, match="hotluks repair") as info:
            await op.attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False)
        assert info.value.exit_code == 3
        (entry,) = await Operator(fake, state_dir=tmp_path / "s").status()
        assert entry.status == "needs-repair" and entry.needs_repair
    run(go())


@pytest.mark.parametrize("damage", ["removed", "read-only"])
def test_state_dir_gone_or_read_only_mid_attach_rolls_back(tmp_path: Path, damage: str) -> None:
    """The state directory disappears (or turns read-only) after step 2: rollback, exit 1, VM as before."""
    fake = FakeQemu()
    state = tmp_path / "s"

    class Saboteur(FaultInjector):
        async def execute(self, command: str, arguments: Any = None) -> Any:
            if len(self.mutations) == 2 and not self.failed:
                self.failed = True
                journal_dir = next(state.glob("fake-vm-*"))
                if damage == "removed":
                    for path in journal_dir.iterdir():
                        path.unlink()
                    journal_dir.rmdir()
                else:  # as root, permissions do not stop writes: make every write fail like EROFS
                    os.chmod(journal_dir, 0o500)
            return await super().execute(command, arguments)

    async def go() -> None:
        before = _names(fake)
        op = Operator(Saboteur(fake, None), state_dir=state)
        if damage == "read-only" and os.geteuid() == 0:
            with journal_failing_at(3, onwards=True):
                with pytest.raises(RolledBackError, match="as before"):
                    await op.attach(make(tmp_path, "detached-header-raw"), SECRETS, preflight=False)
        else:
            with pytest.raises(RolledBackError, match="as before"):
                await op.attach(make(tmp_path, "detached-header-raw"), SECRETS, preflight=False)
        assert _names(fake) == before
    run(go())


def test_a_file_that_cannot_be_opened_for_add_fd_is_a_failed_step(tmp_path: Path) -> None:
    """A local OSError while opening the descriptor is the step's failure (no faked QEMU error): rollback."""
    fake = FakeQemu(passes_fds=True)
    disk = make(tmp_path, "detached-header-raw")
    (tmp_path / "payload.img").unlink()

    async def go() -> None:
        before = _names(fake)
        with pytest.raises(RolledBackError, match=r"add-fd fdset-\d+\) failed: FileNotFoundError") as info:
            await Operator(fake, state_dir=tmp_path / "s").attach(disk, SECRETS, preflight=False)
        assert "payload.img" in str(info.value) and "remove-fd" in str(info.value)
        assert _names(fake) == before
    run(go())


def test_losing_the_vm_after_detach_removed_things_is_exit_3_not_2(tmp_path: Path) -> None:
    fake = FakeQemu()

    class Flaky(FaultInjector):
        async def execute(self, command: str, arguments: Any = None) -> Any:
            if command == "query-named-block-nodes" and "object-del" in self.mutations:
                from hotluks.errors import BackendError

                raise BackendError("connection to QEMU lost (injected)")
            return await super().execute(command, arguments)

    async def go() -> None:
        await Operator(fake, state_dir=tmp_path / "s").attach(make(tmp_path, "attached-luks"), SECRETS,
                                                              preflight=False)
        with pytest.raises(IncompleteError, match="cannot verify") as info:
            await Operator(Flaky(fake, None), state_dir=tmp_path / "s").detach("vdb")
        assert info.value.exit_code == 3
        (entry,) = await Operator(fake, state_dir=tmp_path / "s").status()
        assert entry.status == "detaching" and entry.needs_repair
        (action,) = await Operator(fake, state_dir=tmp_path / "s").repair()
        assert action.action == "finished detach"
    run(go())


def test_an_attachment_with_parts_missing_is_not_already_attached(tmp_path: Path) -> None:
    fake = FakeQemu()
    disk = make(tmp_path, "attached-luks")

    async def go() -> None:
        op = Operator(fake, state_dir=tmp_path / "s")
        await op.attach(disk, SECRETS, preflight=False)
        fake.guest = "responsive"
        await fake.execute("device_del", {"id": "hl-vdb"})  # someone else unplugged it
        await asyncio.sleep(0.01)
        (entry,) = await op.status()
        assert entry.status == "attached" and not entry.consistent and entry.needs_repair
        with pytest.raises(RefusedError, match="lacks hl-vdb"):
            await op.attach(disk, SECRETS, preflight=False)
        await op.detach("vdb")
        assert (await op.attach(disk, SECRETS, preflight=False)).device == "hl-vdb"
    run(go())


def test_trust_is_checked_again_by_every_operation(tmp_path: Path) -> None:
    fake = FakeQemu()
    state = tmp_path / "s"

    async def go() -> None:
        op = Operator(fake, state_dir=state)
        await op.attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False)
        os.chmod(state, 0o777)  # someone loosened it while the agent keeps its session open
        with pytest.raises(UntrustedStateDirError):
            await op.detach("vdb")
        os.chmod(state, 0o700)
        await op.detach("vdb")
    run(go())


def test_repair_forgets_an_unfinished_operation_of_a_gone_instance(tmp_path: Path) -> None:
    old = FakeQemu(identity=VMIdentity("vm-1", "old"))

    async def go() -> None:
        with pytest.raises(IncompleteError):
            await Operator(FaultInjector(old, Case("undo-fails", 3, "blockdev-del")), state_dir=tmp_path / "s").attach(
                make(tmp_path, "attached-luks"), SECRETS, preflight=False)
        new = Operator(FakeQemu(identity=VMIdentity("vm-1", "new")), state_dir=tmp_path / "s")
        (entry,) = await new.status()
        assert entry.status == "lost"
        (action,) = await new.repair()
        assert action.action == "forgotten" and await new.status() == []
    run(go())


def test_status_during_an_attach_says_in_progress_not_repair(tmp_path: Path) -> None:
    fake = FakeQemu()
    seen: list[Any] = []

    class Watching(FaultInjector):
        async def execute(self, command: str, arguments: Any = None) -> Any:
            if command == "device_add":
                seen.extend(await Operator(fake, state_dir=tmp_path / "s").status())
            return await super().execute(command, arguments)

    async def go() -> None:
        await Operator(Watching(fake, None), state_dir=tmp_path / "s").attach(make(tmp_path, "attached-luks"),
                                                                               SECRETS, preflight=False)
    run(go())
    (entry,) = seen
    assert entry.status == "attaching" and entry.in_progress and not entry.needs_repair
