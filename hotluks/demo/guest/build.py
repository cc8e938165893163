"""Build (once, cached) the tiny guest: a Debian kernel and a busybox initramfs.

Layout of the cache (``$HOTLUKS_CACHE/guest`` or ``~/.cache/hotluks/guest``)::

    <kernel-version>/vmlinuz                the packaged bzImage
    <kernel-version>/vmlinux                its uncompressed ELF (PVH boot: ~2.5 s faster under TCG)
    <kernel-version>/modules/<file>.ko      the module closure, decompressed
    <kernel-version>/modules.load           their load order, one per line
    <kernel-version>/modules.wanted         the modules asked for (a different list rebuilds)
    <kernel-version>/initramfs.cpio.gz      busybox + modules + /init
    <kernel-version>/initramfs.key          hash of what the initramfs was built from

Kernel directories appear by atomic rename; the initramfs by ``os.replace``.
A lock file serialises concurrent builders. Nothing here is ever committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hotluks.demo.guest.cpio import Entry, newc_archive
from hotluks.demo.guest.errors import GuestUnavailableError
from hotluks.demo.guest.initscript import GUEST_MODULE_DIR, init_script
from hotluks.demo.guest.kernelimage import extract_vmlinux
from hotluks.demo.guest.modules import load_order, parse_builtin, parse_modules_dep

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: what the guest needs: PCI virtio transport, virtio-blk, virtio-scsi + SCSI disks
WANTED_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod")
_CMD_TIMEOUT = 600.0


@dataclass(frozen=True)
class GuestArtifacts:
    """A built guest: what ``-kernel``/``-initrd`` (or libvirt's ``<os>``) need."""

    kernel_version: str
    #: what to pass to ``-kernel``: the PVH ``vmlinux`` when available, else the bzImage
    kernel: Path
    initrd: Path
    modules: tuple[str, ...]
    bzimage: Path


def cache_root() -> Path:
    """``$HOTLUKS_CACHE/guest`` when set, else ``~/.cache/hotluks/guest``."""
    base = os.environ.get("HOTLUKS_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "hotluks"
    return root / "guest"


def _run(args: Sequence[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=_CMD_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise GuestUnavailableError(f"{what}: {args[0]} is not installed (run scripts/setup-system.sh)") from None
    except subprocess.TimeoutExpired:
        raise GuestUnavailableError(f"{what}: {args[0]} did not finish within {_CMD_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GuestUnavailableError(f"{what} failed (exit {done.returncode}): {' / '.join(detail)}")
    return done.stdout


def versioned_kernel_package(depends_output: str) -> str | None:
    """The ``linux-image-<version>`` package named in ``apt-cache depends linux-image-amd64`` output."""
    for line in depends_output.splitlines():
        match = re.match(r"\s*\|?Depends:\s*(linux-image-\d\S*)", line)
        if match:
            return match.group(1)
    return None


def resolve_kernel_package() -> str:
    """Ask apt (local lists, no network) which versioned kernel package the metapackage names."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends")
    package = versioned_kernel_package(out)
    if package is None:
        raise GuestUnavailableError(f"apt offers no kernel behind {KERNEL_METAPACKAGE} (run apt-get update)")
    return package


APT_LISTS = Path("/var/lib/apt/lists")


def _resolve_with_memo(root: Path) -> str:
    """:func:`resolve_kernel_package`, remembered until apt's lists change (apt-cache takes ~0.5 s)."""
    memo = root / "kernel-package"
    try:
        lists = str(APT_LISTS.stat().st_mtime_ns)
    except OSError:
        return resolve_kernel_package()
    remembered = (_read(memo) or "").split()
    if len(remembered) == 2 and remembered[0] == lists:
        return remembered[1]
    package = resolve_kernel_package()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kernel-package.", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(f"{lists} {package}\n")
    os.replace(tmp, memo)
    return package


def _apt_download(package: str, dest: Path) -> Path:
    args = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:  # _apt cannot write into our private temp dir
        args += ["-o", "APT::Sandbox::User=root"]
    _run([*args, package], f"apt-get download {package}", cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise GuestUnavailableError(f"apt-get download {package} produced no .deb")
    return debs[-1]


def elf_is_static(head: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP segment (needs the first 4 KiB)."""
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return False
    phoff = int.from_bytes(head[0x20:0x28], "little")
    phentsize = int.from_bytes(head[0x36:0x38], "little")
    phnum = int.from_bytes(head[0x38:0x3A], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if start + 4 > len(head):
            return False
        if int.from_bytes(head[start:start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def _is_static_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return elf_is_static(f.read(4096))
    except OSError:
        return False


def find_busybox(workdir: Path) -> Path:
    """A static busybox: the installed ``busybox-static`` one, else one from its downloaded .deb."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if _is_static_binary(candidate):
            return candidate
    deb = _apt_download(BUSYBOX_PACKAGE, workdir)
    root = workdir / "busybox-root"
    _run(["dpkg-deb", "-x", str(deb), str(root)], "dpkg-deb -x busybox-static")
    for candidate in (root / "bin" / "busybox", root / "usr" / "bin" / "busybox"):
        if _is_static_binary(candidate):
            return candidate
    raise GuestUnavailableError("no static busybox found in busybox-static")


def decompressed_module(path: Path) -> tuple[str, bytes]:
    """Basename ending in ``.ko`` and the module's bytes (Debian may ship .ko.xz)."""
    name = path.name
    if name.endswith(".ko.xz"):
        return name[:-3], lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return name[:-3], gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        data = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=False, timeout=60)
        if data.returncode != 0:
            raise GuestUnavailableError(f"cannot decompress {name} (zstd missing or failed)")
        return name[:-4], data.stdout
    return name, path.read_bytes()


def _extract_kernel(deb: Path, package: str, target: Path, wanted: Sequence[str]) -> None:
    """Unpack ``deb`` in a scratch dir and copy vmlinuz + the module closure into ``target``."""
    kver = package.removeprefix("linux-image-")
    scratch = target.parent / f".{target.name}.unpack"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        _run(["dpkg-deb", "-x", str(deb), str(scratch)], f"dpkg-deb -x {deb.name}")
        moddir = scratch / "lib" / "modules" / kver
        if not (moddir / "modules.dep").exists():
            _run(["depmod", "-b", str(scratch), kver], "depmod")
        deps = parse_modules_dep((moddir / "modules.dep").read_text())
        builtin_file = moddir / "modules.builtin"
        builtin = parse_builtin(builtin_file.read_text()) if builtin_file.exists() else frozenset()
        order = load_order(deps, wanted, builtin)
        (target / "modules").mkdir(parents=True)
        names = []
        for rel in order:
            name, data = decompressed_module(moddir / rel)
            (target / "modules" / name).write_bytes(data)
            names.append(name)
        (target / "modules.load").write_text("".join(f"{n}\n" for n in names))
        vmlinuz = scratch / "boot" / f"vmlinuz-{kver}"
        if not vmlinuz.exists():
            raise GuestUnavailableError(f"{deb.name} has no boot/vmlinuz-{kver}")
        shutil.copyfile(vmlinuz, target / "vmlinuz")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_kernel(root: Path, package: str, wanted: Sequence[str], kernel_deb: Path | None) -> Path:
    kdir = root / package.removeprefix("linux-image-")
    stamp = "".join(f"{name}\n" for name in wanted)
    if (kdir / "modules.load").exists() and (kdir / "vmlinuz").exists() and _read(kdir / "modules.wanted") == stamp:
        return kdir
    building = Path(tempfile.mkdtemp(prefix=f".{kdir.name}.", dir=root))
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".download.") as tmp:
            os.chmod(tmp, 0o755)
            deb = kernel_deb or _apt_download(package, Path(tmp))
            _extract_kernel(deb, package, building, wanted)
        (building / "modules.wanted").write_text(stamp)
        os.chmod(building, 0o755)  # readable by a QEMU that libvirt runs as another user
        shutil.rmtree(kdir, ignore_errors=True)  # a half-made directory from an older layout
        os.rename(building, kdir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return kdir


def _cached_kernel_packages(root: Path) -> list[str]:
    """Packages of complete kernel directories already in the cache (offline fallback)."""
    if not root.is_dir():
        return []
    return sorted(f"linux-image-{d.name}" for d in root.iterdir()
                  if not d.name.startswith(".") and (d / "modules.load").exists() and (d / "vmlinuz").exists())


def _ensure_vmlinux(kdir: Path) -> Path:
    """Write ``vmlinux`` (PVH ELF) next to ``vmlinuz`` once; return what ``-kernel`` should get."""
    target, unusable = kdir / "vmlinux", kdir / "vmlinux.unusable"
    if target.exists():
        return target
    if unusable.exists():
        return kdir / "vmlinuz"
    elf = extract_vmlinux((kdir / "vmlinuz").read_bytes())
    if elf is None:
        unusable.write_text("no PVH-bootable ELF inside vmlinuz\n")
        return kdir / "vmlinuz"
    fd, tmp = tempfile.mkstemp(prefix=".vmlinux.", dir=kdir)
    with os.fdopen(fd, "wb") as f:
        f.write(elf)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def initramfs_entries(busybox: bytes, modules: Sequence[tuple[str, bytes]], init: str) -> list[Entry]:
    """The members of the initramfs (pure)."""
    entries = [Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules",
                                            GUEST_MODULE_DIR.lstrip("/"))]
    entries.append(Entry.chardev("dev/console", 5, 1))
    entries.append(Entry.file("bin/busybox", busybox, 0o755))
    entries.append(Entry.symlink("bin/sh", "busybox"))
    entries += [Entry.file(f"{GUEST_MODULE_DIR.lstrip('/')}/{name}", data) for name, data in modules]
    entries.append(Entry.file("init", init.encode(), 0o755))
    return entries


def _ensure_initramfs(kdir: Path, busybox: Path) -> Path:
    names = [n for n in (kdir / "modules.load").read_text().split() if n]
    modules = [(n, (kdir / "modules" / n).read_bytes()) for n in names]
    init = init_script(names)
    bb = busybox.read_bytes()
    digest = hashlib.sha256()
    for part in (bb, init.encode(), *(data for _, data in modules)):
        digest.update(hashlib.sha256(part).digest())
    key = digest.hexdigest()
    target = kdir / "initramfs.cpio.gz"
    keyfile = kdir / "initramfs.key"
    if target.exists() and keyfile.exists() and keyfile.read_text().strip() == key:
        return target
    archive = gzip.compress(newc_archive(initramfs_entries(bb, modules, init)), compresslevel=6, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix=".initramfs.", dir=kdir)
    with os.fdopen(fd, "wb") as f:
        f.write(archive)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    keyfile.write_text(key + "\n")
    return target


def build_guest(*, cache: Path | None = None, kernel_deb: Path | None = None, kernel_package: str | None = None,
                wanted_modules: Sequence[str] = WANTED_MODULES) -> GuestArtifacts:
    """Return the guest's kernel and initramfs, building and caching them on first use.

    By default the kernel is the one ``linux-image-amd64`` names; ``kernel_package``
    picks another ``linux-image-<version>`` package (e.g. from backports), and
    ``kernel_deb`` uses a local .deb instead of downloading.
    Raises :class:`GuestUnavailableError` when no kernel (or busybox) can be obtained.
    """
    root = cache or cache_root()
    if kernel_deb is not None:
        package = kernel_deb.name.split("_", 1)[0]
        if not package.startswith("linux-image-"):
            raise GuestUnavailableError(f"{kernel_deb.name} is not a linux-image package")
    elif kernel_package is not None:
        if not re.fullmatch(r"linux-image-\d[\w.+~-]*", kernel_package):
            raise GuestUnavailableError(f"{kernel_package!r} is not a versioned linux-image package name")
        package = kernel_package
    else:
        try:
            package = _resolve_with_memo(root)
        except GuestUnavailableError:
            cached = _cached_kernel_packages(root)
            if not cached:
                raise
            package = cached[-1]
    with _locked(root):
        kdir = _ensure_kernel(root, package, wanted_modules, kernel_deb)
        with tempfile.TemporaryDirectory(dir=root, prefix=".busybox.") as tmp:
            os.chmod(tmp, 0o755)
            initrd = _ensure_initramfs(kdir, find_busybox(Path(tmp)))
        kernel = _ensure_vmlinux(kdir)
    names = tuple(n for n in (kdir / "modules.load").read_text().split() if n)
    return GuestArtifacts(kdir.name, kernel, initrd, names, kdir / "vmlinuz")


