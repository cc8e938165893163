"""QMP through the ``virsh`` binary, for hosts without libvirt-python.

Commands never travel in argv: each one is fed on stdin to virsh's shell mode
(``virsh -q -c URI`` reading ``qemu-monitor-command DOM 'JSON'``), so secrets in
an ``object-add`` do not show in ``ps``. Shell mode keeps a readline history in
``$XDG_CACHE_HOME/libvirt/virsh/history`` (default ``~/.cache``), written when virsh
exits; ``VIRSH_HISTSIZE=0`` alone would truncate the user's own history there. So
every virsh we run gets a private, empty cache directory (removed on ``close``) and
a history size of 0, and none of the variables that make virsh or libvirt log
commands (``VIRSH_LOG_FILE``, ``VIRSH_DEBUG``, ``LIBVIRT_DEBUG``, ``LIBVIRT_LOG_*``).
``LIBVIRT_AUTOSTART=0`` keeps virsh from spawning a session daemon that would inherit
that private directory: with a ``qemu:///session`` URI the daemon must already run.

Events: ``events()`` starts a ``virsh`` shell running ``qemu-monitor-event
--loop`` when the block is entered, i.e. before the command that triggers the
event. virsh block-buffers a pipe, so its stdout is a pseudo-terminal. The
watcher first prints a marker (it is connected once the marker appears);
the next ``execute()`` waits for every open watcher's marker before sending.

Like every monitor command, these taint the domain (``custom-monitor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import shutil
import signal
import subprocess
import tempfile
import termios
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from hotluks.backends.base import EventQueue, MasterKey, MonitorBackend, QMPArgs, VMIdentity
from hotluks.backends.libvirt_shared import (
    DEFAULT_URI,
    SECRET_USAGES,
    domain_identity,
    domain_key,
    no_domain,
    not_running,
    parse_reply,
    private_secret_message,
    probe_master_key,
    secret_uuid,
)
from hotluks.backends.virsh_shell import (
    LOGGING_VARIABLES,
    PROMPT,
    command_outputs,
    dominfo_fields,
    monitor_line,
    parse_event_line,
    quiet_environment,
    reply_from_output,
    shell_quote,
    virsh_error,
    virsh_json,
)
from hotluks.errors import BackendError, SecretError
from hotluks.lifecycle.coverage import Moment, completed_backup, parse_backup, parse_checkpoint, parse_snapshot

__all__ = ["LOGGING_VARIABLES", "PROMPT", "READY_MARK", "VirshBackend", "command_outputs", "dominfo_fields",
           "monitor_line", "parse_event_line", "quiet_environment", "reply_from_output", "shell_quote",
           "virsh_error", "virsh_json"]

VIRSH = "virsh"
READY_MARK = "hotluks-watch-ready"
class _Watcher:
    """One ``virsh qemu-monitor-event --loop`` shell whose stdout is a pty, read by the asyncio loop."""

    def __init__(self, backend: VirshBackend, queue: EventQueue):
        self.backend = backend
        self.queue = queue
        names = queue.names
        loop = asyncio.get_running_loop()
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # plain "\n" line ends
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        event_opts = ""
        if names:
            pattern = "^(" + "|".join(re.escape(n) for n in sorted(names)) + ")$"
            event_opts = f" --event {shell_quote(pattern)} --regex"
        script = (f"echo {READY_MARK[:-5]}{shell_quote(READY_MARK[-5:])}\n"
                  f"qemu-monitor-event --domain {shell_quote(backend.vm)} --loop{event_opts}\n")
        try:
            self.proc = subprocess.Popen(
                [backend.virsh, "-q", "-c", backend.uri], stdin=subprocess.PIPE, stdout=slave,
                stderr=subprocess.PIPE, start_new_session=True, env=backend.environment())
        finally:
            os.close(slave)
        assert self.proc.stdin is not None
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()  # stdin stays open: virsh's shell ends when it sees EOF
        self.fd = master
        self.ready: asyncio.Future[None] = loop.create_future()
        self._buffer = ""
        self._loop = loop
        loop.add_reader(master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:  # virsh exited
            self._loop.remove_reader(self.fd)
            if not self.ready.done():
                self.ready.set_exception(BackendError("virsh event watcher exited before it was ready"))
            return
        self._buffer += chunk.decode(errors="replace")
        if not self.ready.done() and READY_MARK in self._buffer:
            self.ready.set_result(None)
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            event = parse_event_line(line.replace("\r", ""), self.backend.vm)
            if event is not None:
                self.queue.put(event)

    def stop(self) -> None:
        """End virsh by its PID and release the pty."""
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream is not None:
                stream.close()
        os.close(self.fd)
        if not self.ready.done():
            self.ready.cancel()


class VirshBackend(MonitorBackend):
    """Runs ``virsh`` per command (input on stdin, never in argv)."""

    name = "virsh"
    passes_fds = True
    stores_secrets = True

    def __init__(self, domain: str, uri: str = DEFAULT_URI, *, master_key: MasterKey | None = None,
                 timeout: float = 10.0, probe_master_key: bool = True, virsh: str | None = None):
        super().__init__()
        self.vm = domain
        self.uri = uri
        self.master_key = master_key
        self.timeout = timeout
        self._probe_key = probe_master_key and master_key is None
        self.virsh = virsh or shutil.which(VIRSH) or VIRSH
        self._watchers: list[_Watcher] = []
        self._cache_dir: tempfile.TemporaryDirectory[str] | None = None
        #: the domain's name and UUID as libvirt knows them (set by connect)
        self.domain_name: str | None = None
        self.domain_uuid: str | None = None

    def environment(self) -> dict[str, str]:
        """virsh's environment: a private cache directory (history), no logging variables."""
        if self._cache_dir is None:
            self._cache_dir = tempfile.TemporaryDirectory(prefix="hotluks-virsh-")
        return quiet_environment(self._cache_dir.name)

    @property
    def vm_key(self) -> str:
        """The domain's UUID once connected (every URI alias, name or UUID alike), else ``libvirt-URI-NAME``."""
        return domain_key(self.domain_uuid, self.uri, self.domain_name or self.vm)

    async def _run(self, stdin_text: str, fds: Sequence[int] = ()) -> tuple[int, str, str]:
        """Run ``virsh -q -c URI`` in shell mode with ``stdin_text``; (status, stdout, stderr)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.virsh, "-q", "-c", self.uri, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=tuple(fds),
                env=self.environment())
        except OSError as exc:
            raise BackendError(f"cannot run {self.virsh}: {exc.strerror}; install libvirt-clients") from None
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(stdin_text.encode())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise BackendError(f"virsh did not finish within {self.timeout:.0f}s") from None
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def run_command(self, line: str) -> tuple[int, str, str]:
        """One virsh shell command line (quote arguments with ``shell_quote``): (status, stdout, stderr)."""
        return await self._run(line + "\n")

    async def connect(self) -> VirshBackend:
        """Check the domain exists and runs; probe libvirt's masterKey0."""
        _, out, err = await self._run(f"dominfo --domain {shell_quote(self.vm)}\n")
        if err.strip():
            message = virsh_error(err)
            if "failed to get domain" in message or "Domain not found" in message:
                raise no_domain(self.vm, self.uri)
            raise BackendError(f"virsh cannot reach domain {self.vm!r} on {self.uri}: {message}")
        info = dominfo_fields("".join(command_outputs(out)))
        if info.get("State") in ("shut off", "crashed"):
            raise not_running(self.vm, self.uri)
        self.domain_name = info.get("Name") or None
        self.domain_uuid = secret_uuid(info.get("UUID", ""))
        if self._probe_key:
            self.master_key = await probe_master_key(self)
        return self

    async def identity(self) -> VMIdentity:
        """The domain's UUID and its running QEMU (see :func:`domain_identity`)."""
        _, out, err = await self._run(f"domid --domain {shell_quote(self.vm)}\n")
        text = "".join(command_outputs(out)).strip()
        if self.domain_uuid is None:
            raise BackendError(f"virsh did not report the UUID of domain {self.vm!r}")
        domain_id = int(text) if text.isdigit() else None
        if domain_id is None and err.strip():
            raise BackendError(f"virsh cannot reach domain {self.vm!r} on {self.uri}: {virsh_error(err)}")
        return await domain_identity(self, self.domain_uuid, domain_id)

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        return await self.execute_with_fds(command, arguments, ())

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        """Run a command; ``fds`` (``add-fd``/``getfd``) go along via ``--pass-fds``.

        See :meth:`hotluks.backends.libvirt.LibvirtBackend.execute_with_fds` for why.
        """
        for watcher in list(self._watchers):
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(watcher.ready)
            except TimeoutError:
                raise BackendError(f"virsh event watcher for {self.vm!r} did not start in time") from None
        text = virsh_json(command, arguments)
        _, out, err = await self._run(monitor_line(self.vm, text, fds), fds)
        try:
            return parse_reply(command, reply_from_output(command, out))
        except BackendError:
            if err.strip():
                message = virsh_error(err).replace(text, "<command>")
                raise BackendError(f"{command}: virsh failed on domain {self.vm!r}: {message}") from None
            raise

    @contextlib.contextmanager
    def events(self, names: Iterable[str] = ()) -> Iterator[EventQueue]:
        """Collect events while the block runs; the virsh watcher starts on entry."""
        queue = EventQueue(names)
        watcher = _Watcher(self, queue)  # each watcher feeds only its own queue
        self._watchers.append(watcher)
        try:
            yield queue
        finally:
            self._watchers.remove(watcher)
            watcher.stop()

    async def persistent_xml(self) -> str | None:
        """``virsh dumpxml --inactive`` (libvirt gives the live XML of a transient domain)."""
        status, out, err = await self._run(f"dumpxml --inactive --domain {shell_quote(self.vm)}\n")
        if status != 0 or err.strip():
            raise BackendError(f"virsh cannot read the definition of {self.vm!r}: {virsh_error(err)}")
        return "".join(command_outputs(out)).strip()

    async def moments(self) -> list[Moment]:
        """Snapshots and checkpoints (with creation time), the running and the last completed backup job."""
        dom = shell_quote(self.vm)
        _, out, _ = await self._run(f"snapshot-list --domain {dom} --name\ncheckpoint-list --domain {dom} --name\n")
        lists = [[n.strip() for n in text.splitlines() if n.strip()] for text in command_outputs(out)]
        if len(lists) != 2:
            raise BackendError(f"virsh did not list the snapshots and checkpoints of {self.vm!r}")
        lines = [f"snapshot-dumpxml --domain {dom} --snapshotname {shell_quote(n)}" for n in lists[0]]
        lines += [f"checkpoint-dumpxml --domain {dom} --checkpointname {shell_quote(n)}" for n in lists[1]]
        lines += [f"backup-dumpxml --domain {dom}", f"domjobinfo --domain {dom} --completed --keep-completed"]
        _, out, _ = await self._run("".join(line + "\n" for line in lines))
        found = [parse_snapshot(x) for x in re.findall(r"(?s)<domainsnapshot\b.*?</domainsnapshot>", out)]
        found += [parse_checkpoint(x) for x in re.findall(r"(?s)<domaincheckpoint\b.*?</domaincheckpoint>", out)]
        found += [parse_backup(x) for x in re.findall(r"(?s)<domainbackup\b.*?</domainbackup>", out)]
        job = dominfo_fields(command_outputs(out)[-1] if PROMPT in out else "")
        if job.get("Job type") == "Completed" and job.get("Operation") == "Backup":
            found.append(completed_backup())
        return [m for m in found if m is not None]

    async def secret_value(self, ref: str) -> bytes | None:
        """Value of a libvirt secret by UUID or usage (``secret-get-value`` prints it on stdout)."""
        import base64

        uuid = secret_uuid(ref) or await self._secret_uuid_by_usage(ref)
        if uuid is None:
            return None
        _, out, err = await self._run(f"secret-get-value --secret {shell_quote(uuid)}\n")
        values = [text.strip() for text in command_outputs(out) if text.strip()]
        if not values:
            message = virsh_error(err)
            if "secret is private" in message:
                raise SecretError(private_secret_message(ref))
            if "not found" in message or "no value" in message or "Secret not found" in message:
                return None
            raise BackendError(f"cannot read libvirt secret {ref!r}: {message}")
        try:
            return base64.b64decode(values[0], validate=True)
        except ValueError:
            raise BackendError(f"virsh printed an unreadable value for secret {ref!r}") from None

    async def _secret_uuid_by_usage(self, usage: str) -> str | None:
        """Search ``secret-list`` for a secret whose usage id is ``usage`` (volume first)."""
        from lxml import etree

        _, out, _ = await self._run("secret-list\n")
        uuids = re.findall(r"(?m)^\s*([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\s", out)
        if not uuids:
            return None
        _, out, _ = await self._run("".join(f"secret-dumpxml --secret {shell_quote(u)}\n" for u in uuids))
        found: dict[str, str] = {}
        for block in re.findall(r"(?s)<secret\b.*?</secret>", out):
            try:
                root = etree.fromstring(block.encode())
            except etree.XMLSyntaxError:
                continue
            use = root.find("usage")
            uuid_text = root.findtext("uuid")
            if use is None or uuid_text is None:
                continue
            ident = use.findtext("volume") or use.findtext("name") or use.findtext("target") or ""
            if ident == usage:
                found.setdefault(use.get("type", ""), uuid_text.strip())
        for kind in SECRET_USAGES:
            if kind in found:
                return found[kind]
        return None

    async def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.stop()
        self._watchers.clear()
        if self._cache_dir is not None:
            self._cache_dir.cleanup()
            self._cache_dir = None
