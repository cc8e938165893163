"""A throwaway single-node Ceph cluster (one mon, one memstore OSD) on 127.0.0.1.

Everything lives in one temporary directory: ``ceph.conf``, the mon store, the
OSD's memstore metadata, logs, the keyring (cephx variant) and a ``state.json``
recording the daemons' PIDs. Daemons run in the foreground (``-f``) as children
started in their own session; they are ended by PID (SIGTERM, then SIGKILL),
never by name. No systemd, no mgr.

Ports are fixed per variant (mon msgr2 on ``base``, msgr1 on ``base + 1``, OSD
ports in ``base + 10 .. base + 29``), so an auth-none and a cephx cluster can
run side by side, but two clusters of the same variant cannot: ``start`` refuses
clearly when the mon ports are taken.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotluks.errors import HotluksError, RefusedError

#: base port per variant (auth none / cephx)
DEFAULT_BASE_PORT = {False: 13300, True: 13400}
#: the pool every cluster creates and initialises for RBD
POOL = "rbd"
#: the unprivileged cephx client created in the cephx variant
CLIENT_NAME = "hotluks"
MON_ID = "a"
OSD_ID = 0
CLI_TIMEOUT = 60.0


class CephClusterError(HotluksError):
    """The test cluster could not be started or a cluster command failed."""


class CephPortsBusyError(RefusedError):
    """The cluster's fixed ports are already in use (another cluster is running)."""


@dataclass(frozen=True)
class CephPorts:
    """The TCP ports one cluster binds on 127.0.0.1."""

    base: int

    @property
    def mon_v2(self) -> int:
        return self.base

    @property
    def mon_v1(self) -> int:
        return self.base + 1

    @property
    def osd_min(self) -> int:
        return self.base + 10

    @property
    def osd_max(self) -> int:
        return self.base + 29

    @property
    def mon_addrv(self) -> str:
        return f"[v2:127.0.0.1:{self.mon_v2},v1:127.0.0.1:{self.mon_v1}]"


def render_conf(fsid: str, ports: CephPorts, root: Path, *, cephx: bool, memstore_mb: int) -> str:
    """The cluster's ceph.conf (pure). Keyrings are per daemon/admin so any other
    client name has no key unless one is given (QEMU's ``key-secret``)."""
    auth = "cephx" if cephx else "none"
    lines = [
        "[global]",
        f"fsid = {fsid}",
        f"mon host = {ports.mon_addrv}",
        "public addr = 127.0.0.1",
        "cluster addr = 127.0.0.1",
        "public network = 127.0.0.0/8",
        "cluster network = 127.0.0.0/8",
        "ms bind ipv4 = true",
        "ms bind ipv6 = false",
        f"ms bind port min = {ports.osd_min}",
        f"ms bind port max = {ports.osd_max}",
        f"auth cluster required = {auth}",
        f"auth service required = {auth}",
        f"auth client required = {auth}",
        "auth allow insecure global id reclaim = false" if cephx else "",
        "mon warn on insecure global id reclaim allowed = false",
        "client mount timeout = 15",
        "rados mon op timeout = 30",
        "mon data avail warn = 1",
        "mon data avail crit = 0",
        "osd objectstore = memstore",
        f"memstore device bytes = {memstore_mb * 1024 * 1024}",
        "osd pool default size = 1",
        "osd pool default min size = 1",
        "osd pool default pg num = 8",
        "osd pool default pgp num = 8",
        "osd pool default pg autoscale mode = off",
        "mon allow pool size one = true",
        "mon allow pool delete = true",
        "mon warn on pool no redundancy = false",
        "osd crush chooseleaf type = 0",
        "osd mon shutdown timeout = 1",
        f"run dir = {root / 'run'}",
        f"log file = {root / 'log'}/$name.log",
        f"mon data = {root / 'mon'}/$id",
        f"osd data = {root / 'osd'}/$id",
        "keyring = /dev/null" if not cephx else f"keyring = {root / 'nokeyring'}",
        "",
        "[mon]",
        f"admin socket = {root / 'run'}/$cluster-$name.asok",
        "",
        "[osd]",
        f"admin socket = {root / 'run'}/$cluster-$name.asok",
        "",
        "[client]",
        "admin socket =",
        "",
        f"[mon.{MON_ID}]",
        f"public addrv = {ports.mon_addrv}",
    ]
    if cephx:
        keyring = root / "keyring"
        lines += [f"keyring = {keyring}", "", f"[osd.{OSD_ID}]",
                  f"keyring = {keyring}", "", "[client.admin]", f"keyring = {keyring}"]
    return "\n".join(line for line in lines if line is not None) + "\n"


def ports_in_use(ports: CephPorts) -> list[int]:
    """The mon ports that something already listens on (127.0.0.1)."""
    busy = []
    for port in (ports.mon_v2, ports.mon_v1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _end_pid(pid: int, marker: str, timeout: float) -> None:
    """SIGTERM then SIGKILL ``pid`` if it is still a process whose argv holds ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if marker.encode() not in cmdline:  # PID reused by something we did not start
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll /proc instead
                done = 0 if Path(f"/proc/{pid}").exists() and not _zombie(pid) else pid
            if done:
                return
            time.sleep(0.05)


def _term_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class CephCluster:
    """One mon + one memstore OSD + an initialised ``rbd`` pool, in a temp dir."""

    def __init__(self, *, cephx: bool = False, base_port: int | None = None, memstore_mb: int = 768,
                 parent_dir: Path | None = None, die_with_parent: bool = True):
        self.cephx = cephx
        self.ports = CephPorts(base_port if base_port is not None else DEFAULT_BASE_PORT[cephx])
        self.memstore_mb = memstore_mb
        self.parent_dir = parent_dir
        self.pool = POOL
        self.root: Path | None = None
        self.pids: dict[str, int] = {}
        self.client_name: str | None = CLIENT_NAME if cephx else None
        self._client_key: str | None = None
        self.start_seconds: float | None = None
        #: daemons get SIGTERM if the starting process dies (a killed test run leaves none behind)
        self.die_with_parent = die_with_parent
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths ---------------------------------------------------------------
    def _need_root(self) -> Path:
        if self.root is None:
            raise CephClusterError("the Ceph cluster is not running")
        return self.root

    @property
    def conf_path(self) -> Path:
        """``ceph.conf`` for ``rbd -c`` and QEMU's ``"conf"`` (admin key only for client.admin)."""
        return self._need_root() / "ceph.conf"

    @property
    def client_key(self) -> str:
        """Base64 cephx key of :attr:`client_name` (cephx variant only). Treat as a secret."""
        if self._client_key is None:
            raise CephClusterError("this cluster runs without cephx: there is no client key")
        return self._client_key

    def write_client_key(self, path: Path) -> Path:
        """Write the client key to ``path`` (mode 0600), e.g. for a QEMU ``secret,file=``."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.client_key)
        return path

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> CephCluster:
        busy = ports_in_use(self.ports)
        if busy:
            raise CephPortsBusyError(
                f"ports {', '.join(map(str, busy))} on 127.0.0.1 are in use: another Ceph test cluster "
                f"({'cephx' if self.cephx else 'auth none'} variant) is probably running; stop it first "
                "(scripts/ceph-cluster.sh stop) or pick another base_port")
        began = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="hotluks-ceph-", dir=self.parent_dir))
        try:
            self._bootstrap(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _bootstrap(self, deadline: float) -> None:
        root = self._need_root()
        for sub in ("run", "log", f"mon/{MON_ID}", f"osd/{OSD_ID}"):
            (root / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        self.conf_path.write_text(render_conf(fsid, self.ports, root, cephx=self.cephx,
                                              memstore_mb=self.memstore_mb))
        mkfs_keyring: list[str] = []
        if self.cephx:
            self._make_keyring(root / "keyring")
            mkfs_keyring = ["--keyring", str(root / "keyring")]
        monmap = root / "run" / "monmap"
        self._tool(["monmaptool", "--create", "--fsid", fsid, "--addv", MON_ID, self.ports.mon_addrv,
                    str(monmap)])
        self._tool(["ceph-mon", "-c", str(self.conf_path), "--mkfs", "-i", MON_ID, "--monmap", str(monmap),
                    *mkfs_keyring])
        self._daemon("mon", ["ceph-mon", "-c", str(self.conf_path), "-f", "-i", MON_ID])
        self._wait(lambda: self._try(["ceph", "mon", "stat"]), deadline, "the mon to answer")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != str(OSD_ID):
            raise CephClusterError(f"expected OSD id {OSD_ID}, the mon allocated {osd_id!r}")
        self._tool(["ceph-osd", "-c", str(self.conf_path), "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid])
        self._daemon("osd", ["ceph-osd", "-c", str(self.conf_path), "-f", "-i", osd_id])
        self._wait(self._osd_up, deadline, "the OSD to come up")
        self.ceph("osd", "pool", "create", self.pool, "8", "8")
        self.rbd("pool", "init", self.pool)

    def _make_keyring(self, keyring: Path) -> None:
        entities: list[tuple[str, list[str]]] = [
            ("mon.", ["mon", "allow *"]),
            ("client.admin", ["mon", "allow *", "osd", "allow *", "mgr", "allow *", "mds", "allow *"]),
            (f"osd.{OSD_ID}", ["mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"]),
            (f"client.{CLIENT_NAME}", ["mon", "profile rbd", "osd", f"profile rbd pool={POOL}"]),
        ]
        for i, (name, caps) in enumerate(entities):
            args = ["ceph-authtool", str(keyring), "--gen-key", "-n", name]
            if i == 0:
                args.insert(1, "--create-keyring")
            for j in range(0, len(caps), 2):
                args += ["--cap", caps[j], caps[j + 1]]
            self._tool(args)
        keyring.chmod(0o600)
        self._client_key = self._tool(["ceph-authtool", str(keyring), "-p", "-n",
                                       f"client.{CLIENT_NAME}"]).strip()

    def _daemon(self, name: str, args: list[str]) -> None:
        root = self._need_root()
        with open(root / "log" / f"{name}.out", "wb") as out:
            child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=_term_with_parent if self.die_with_parent else None)
        self._children[name] = child
        self.pids[name] = child.pid
        self._save_state()

    def _save_state(self) -> None:
        state = {"pids": self.pids, "cephx": self.cephx, "base_port": self.ports.base}
        (self._need_root() / "state.json").write_text(json.dumps(state))

    def _osd_up(self) -> bool:
        out = self._try(["ceph", "osd", "stat", "-f", "json"])
        return out is not None and json.loads(out).get("num_up_osds") == 1

    def _wait(self, probe: Any, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for name, child in self._children.items():
                if child.poll() is not None:
                    raise CephClusterError(f"ceph {name} exited with status {child.returncode} while waiting "
                                           f"for {what}: {self._tail(name)}")
            if probe():
                return
            time.sleep(0.2)
        raise CephClusterError(f"timed out waiting for {what}")

    def _tail(self, name: str) -> str:
        try:
            return (self._need_root() / "log" / f"{name}.out").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """End the daemons by PID (OSD first) and remove the directory."""
        marker = str(self.root) if self.root else ""
        for name in ("osd", "mon"):
            pid = self.pids.pop(name, None)
            if pid is not None and marker:
                _end_pid(pid, marker, timeout)
            child = self._children.pop(name, None)
            if child is not None:
                if child.poll() is None:
                    child.kill()
                child.wait(timeout)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @classmethod
    def stop_dir(cls, root: Path, timeout: float = 10.0) -> None:
        """Stop a cluster started by another process from its directory's ``state.json``."""
        state = json.loads((root / "state.json").read_text())
        for name in ("osd", "mon"):
            pid = state["pids"].get(name)
            if pid is not None:
                _end_pid(int(pid), str(root), timeout)
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> CephCluster:
        return self.start() if self.root is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands ------------------------------------------------------------
    def _tool(self, args: Sequence[str], *, stdin: bytes | None = None, timeout: float = CLI_TIMEOUT) -> str:
        try:
            done = subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout,
                                  stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CephClusterError(f"{args[0]} {args[1] if len(args) > 1 else ''}: timed out after "
                                   f"{timeout:.0f}s") from None
        if done.returncode != 0:
            raise CephClusterError(f"{' '.join(args[:4])}…: exit {done.returncode}: "
                                   f"{done.stderr.decode(errors='replace').strip()[-1500:]}")
        return done.stdout.decode(errors="replace")

    def _try(self, args: Sequence[str]) -> str | None:
        try:
            return self._tool([args[0], "-c", str(self.conf_path), "--connect-timeout", "5", *args[1:]],
                              timeout=10)
        except CephClusterError:
            return None

    def ceph(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``ceph -c CONF ARGS`` as client.admin; stdout."""
        return self._tool(["ceph", "-c", str(self.conf_path), "--connect-timeout", "10", *args], timeout=timeout)

    def rbd(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``rbd -c CONF ARGS`` as client.admin; stdout."""
        return self._tool(["rbd", "-c", str(self.conf_path), *args], timeout=timeout)

    def spec(self, image: str) -> str:
        return image if "/" in image else f"{self.pool}/{image}"

    def create_image(self, image: str, size_mb: int = 64) -> str:
        """Create an image in :attr:`pool`; returns ``pool/image``."""
        self.rbd("create", "--size", f"{size_mb}M", self.spec(image))
        return self.spec(image)

    def remove_image(self, image: str) -> None:
        """Remove an image and its snapshots (no error when it does not exist)."""
        names = json.loads(self.rbd("ls", "-l", "--format", "json", self.pool) or "[]")
        if not any(entry.get("image") == image.split("/")[-1] for entry in names):
            return
        self.rbd("snap", "purge", self.spec(image))
        self.rbd("rm", self.spec(image))

    def images(self) -> list[str]:
        return [str(x) for x in json.loads(self.rbd("ls", "--format", "json", self.pool) or "[]")]

    def encryption_format(self, image: str, fmt: str, passphrase_file: Path, cipher: str = "aes-256") -> None:
        """``rbd encryption format IMAGE luks1|luks2 PASSFILE`` (librbd's own LUKS header)."""
        if fmt not in ("luks1", "luks2"):
            raise CephClusterError(f"librbd formats luks1 or luks2, not {fmt!r}")
        self.rbd("encryption", "format", "--cipher-alg", cipher, self.spec(image), fmt, str(passphrase_file),
                 timeout=120)

    def import_file(self, path: Path, image: str) -> str:
        """``rbd import FILE pool/image``; returns ``pool/image``."""
        self.rbd("import", "--no-progress", str(path), self.spec(image))
        return self.spec(image)

    def export(self, image: str, dest: Path) -> Path:
        """``rbd export`` the whole (raw, still encrypted) image to ``dest``."""
        self.rbd("export", "--no-progress", self.spec(image), str(dest))
        return dest

    # -- QEMU-side helpers ---------------------------------------------------
    def rbd_node(self, image: str, **extra: Any) -> dict[str, Any]:
        """A ``blockdev-add`` rbd node for ``image`` on this cluster (plus ``extra`` keys)."""
        pool, _, name = self.spec(image).partition("/")
        return {"driver": "rbd", "pool": pool, "image": name, "conf": str(self.conf_path), **extra}

    def _image_opts(self, image: str, fmt: str, secret_id: str) -> str:
        qemu_fmt = {"luks1": "luks", "luks2": "luks2"}.get(fmt, fmt)
        pool, _, name = self.spec(image).partition("/")
        return (f"driver=rbd,pool={pool},image={name},conf={self.conf_path},"
                f"encrypt.format={qemu_fmt},encrypt.key-secret={secret_id}")

    def write_plaintext(self, image: str, fmt: str, passphrase_file: Path, data: bytes, offset: int = 0) -> None:
        """Write ``data`` at ``offset`` of the *decrypted* view of a librbd-encrypted image (qemu-io)."""
        with tempfile.NamedTemporaryFile(prefix="hotluks-plain-") as src:
            src.write(data)
            src.flush()
            self._tool(["qemu-io", "--object", f"secret,id=sec0,file={passphrase_file}", "--image-opts",
                        self._image_opts(image, fmt, "sec0"), "-c",
                        f"write -q -s {src.name} {offset} {len(data)}"], timeout=120)

    def read_plaintext(self, image: str, fmt: str, passphrase_file: Path, length: int, offset: int = 0) -> bytes:
        """Read ``length`` bytes at ``offset`` of the decrypted view (``qemu-io read -v``)."""
        dump = self._tool(["qemu-io", "--object", f"secret,id=sec0,file={passphrase_file}", "--image-opts",
                           self._image_opts(image, fmt, "sec0"), "-c", f"read -v {offset} {length}"], timeout=120)
        return parse_hexdump(dump, offset, length)


def parse_hexdump(dump: str, offset: int, length: int) -> bytes:
    """:func:`hotluks.demo.qemu.qemuio.parse_hexdump`, failing with :class:`CephClusterError`."""
    from hotluks.demo.qemu.qemuio import parse_hexdump as parse

    try:
        return parse(dump, offset, length)
    except ValueError as exc:
        raise CephClusterError(str(exc)) from None


def cluster_env(cluster: CephCluster) -> Mapping[str, str]:
    """Environment lines a human (or another test) uses to reach the cluster."""
    env = {"HOTLUKS_CEPH_DIR": str(cluster._need_root()), "HOTLUKS_CEPH_CONF": str(cluster.conf_path),
           "HOTLUKS_CEPH_POOL": cluster.pool}
    if cluster.client_name:
        env["HOTLUKS_CEPH_USER"] = cluster.client_name
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testsupport.ceph start [--cephx] | stop DIR | env DIR`` (for humans)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m testsupport.ceph")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a cluster in the background and print its environment")
    start.add_argument("--cephx", action="store_true")
    start.add_argument("--base-port", type=int)
    for name in ("stop", "env"):
        sub.add_parser(name).add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "start":
        cluster = CephCluster(cephx=args.cephx, base_port=args.base_port, die_with_parent=False)
        try:
            cluster.start()
        except HotluksError as exc:
            print(f"error: {exc}", flush=True)
            return exc.exit_code
        for key, value in cluster_env(cluster).items():
            print(f"export {key}={value}")
        print(f"# started in {cluster.start_seconds:.1f}s; daemons {cluster.pids}")
        cluster._children.clear()  # leave the daemons running; `stop DIR` ends them by PID
        return 0
    if args.cmd == "stop":
        CephCluster.stop_dir(args.dir)
        return 0
    state = json.loads((args.dir / "state.json").read_text())
    print(f"export HOTLUKS_CEPH_DIR={args.dir}\nexport HOTLUKS_CEPH_CONF={args.dir / 'ceph.conf'}\n"
          f"export HOTLUKS_CEPH_POOL={POOL}")
    if state.get("cephx"):
        print(f"export HOTLUKS_CEPH_USER={CLIENT_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
