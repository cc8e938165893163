"""A corpus of hostile ``<disk>`` documents, generated (nothing committed), and a forking runner.

``corpus()`` returns ``{name: bytes}``: malformed XML, entity tricks, out-of-range and
non-ASCII numbers in every numeric field, QEMU-internal and impossible paths, header
aliases of the payload, floods of elements, and seeded random edits of the examples.

``python hostile_corpus.py DIR`` runs ``hotluks plan`` (alternating with ``--json`` and
``cold-cmdline``) on every ``DIR/*.xml`` in a forked child each, with a 10 s alarm and an
address-space limit, and prints one JSON line per case: exit code, seconds, peak RSS
(``wait4``), and whether stderr held a traceback.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "hotluks" / "examples"
TARGET = "<target dev='vdb' bus='virtio'/>"
SECRET = "<secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>"
HANG_SECONDS = 10
ADDRESS_SPACE = 2 << 30  # a guard; the measured peak RSS is what the test bounds

BAD_NUMBERS = ["١٢", "１２", "²", "12\u0660", "-1", "+1", "0x", "0xFFFFFFFFF", "99999999999999999999999",
               "1e3", " 1", "1 ", "", "NaN", "0b101", "٠x1f", "18446744073709551616"]


def disk(body: str, kind: str = "file", extra: str = "") -> bytes:
    return f"<disk type='{kind}' device='disk'{extra}>{body}</disk>".encode()


def plain(more: str = "", source: str = "<source file='/var/lib/p.img'/>", target: str = TARGET) -> bytes:
    return disk(f"<driver name='qemu' type='raw'/>{source}{target}{more}")


def numeric_cases() -> dict[str, bytes]:
    """Every numeric field with every bad number."""
    fields = {
        "pci-slot": lambda v: plain(f"<address type='pci' domain='0' bus='0' slot='{v}' function='0'/>"),
        "pci-bus": lambda v: plain(f"<address type='pci' bus='{v}' slot='3'/>"),
        "drive-unit": lambda v: plain(f"<address type='drive' controller='0' bus='0' target='0' unit='{v}'/>",
                                      target="<target dev='sdb' bus='scsi'/>"),
        "drive-controller": lambda v: plain(f"<address type='drive' controller='{v}' unit='0'/>",
                                            target="<target dev='sdb' bus='scsi'/>"),
        "iscsi-lun": lambda v: disk(f"<source protocol='iscsi' name='iqn.2024-01.org.x:t/{v}'>"
                                    f"<host name='h' port='3260'/></source>{TARGET}", "network"),
        "nbd-port": lambda v: disk(f"<source protocol='nbd' name='e'><host name='h' port='{v}'/></source>{TARGET}",
                                   "network"),
        "iotune": lambda v: plain(f"<iotune><total_bytes_sec>{v}</total_bytes_sec></iotune>"),
        "boot-order": lambda v: plain(f"<boot order='{v}'/>"),
        "iothread": lambda v: disk(f"<driver name='qemu' type='raw' iothread='{v}'/><source file='/p'/>{TARGET}"),
        "blockio": lambda v: plain(f"<blockio logical_block_size='{v}'/>"),
    }
    return {f"number-{field}-{i}": make(value) for field, make in fields.items()
            for i, value in enumerate(BAD_NUMBERS) if make(value)}


def path_cases() -> dict[str, bytes]:
    paths = ["/dev/fdset/0", "/dev/fdset/1/../0", "/dev/fd/3", "/proc/self/fd/3", "/proc/1/root/etc/shadow",
             "/sys/block/sda", "//dev//fdset/0", "/dev/./fdset/0", "/" + "a" * 256, "/" + "a/" * 2100,
             "/p\u202e", "/dev/stdin", "/x/../../dev/fdset/2", "/p\x7f"]
    out = {f"path-{i}": plain(source=f"<source file='{p}'/>") for i, p in enumerate(paths)}
    header = ("<encryption format='luks'>" + SECRET + "<header type='file'><source file='{h}'/></header>"
              "</encryption>")
    for i, alias in enumerate(["//var/lib/p.img", "/var/lib/./p.img", "/var/x/../lib/p.img", "/var//lib//p.img",
                               "/var/lib/p.img/", "/var/lib/../lib/p.img"]):
        out[f"header-is-payload-{i}"] = plain(header.format(h=alias))
    out["config-fdset"] = disk("<source protocol='rbd' name='pool/img'><config file='/dev/fdset/0'/></source>"
                               + TARGET, "network")
    out["nbd-socket-proc"] = disk("<source protocol='nbd'><host transport='unix' socket='/proc/self/fd/0'/>"
                                  "</source>" + TARGET, "network")
    return out


def flood_cases() -> dict[str, bytes]:
    many_hosts = "".join(f"<host name='m{i}' port='6789'/>" for i in range(3000))
    many_secrets = "".join(f"<secret type='passphrase' usage='u{i}'/>" for i in range(3000))
    return {
        "flood-hosts": disk(f"<source protocol='rbd' name='p/i'>{many_hosts}</source>{TARGET}", "network"),
        "flood-secrets": disk(f"<source protocol='rbd' name='p/i'/><encryption format='luks' engine='librbd'>"
                              f"{many_secrets}</encryption>{TARGET}", "network"),
        "flood-attributes": disk("<source file='/p' " + " ".join(f"a{i}='x'" for i in range(5000)) + f"/>{TARGET}"),
        "flood-iotune": plain("<iotune>" + "<total_bytes_sec>1</total_bytes_sec>" * 5000 + "</iotune>"),
        "flood-notes": plain("<backingStore>" + "<backingStore type='file'><source file='/b'/>" * 1000
                             + "</backingStore>" * 1000 + "</backingStore>"),
        "flood-namespaces": disk("".join(f"<x{i}:a xmlns:x{i}='urn:{i}'/>" for i in range(3000)) + TARGET),
        "long-serial": plain("<serial>" + "A" * 100000 + "</serial>"),
        "long-alias": plain("<alias name='ua-" + "a" * 60 + "'/>"),
        "long-target": plain(target="<target dev='vd" + "a" * 5000 + "'/>"),
        "long-usage": plain("<encryption format='luks'><secret type='passphrase' usage='" + "u" * 100000
                            + "'/></encryption>"),
    }


def structure_cases() -> dict[str, bytes]:
    unknown = {f"unknown-in-{where}": doc for where, doc in {
        "disk": plain("<frob/>"), "source": plain(source="<source file='/p'><frob/></source>"),
        "driver": disk("<driver name='qemu' frob='1'/><source file='/p'/>" + TARGET),
        "iotune": plain("<iotune><frob>1</frob></iotune>"), "target": plain(target="<target dev='vdb' frob='x'/>"),
        "encryption": plain("<encryption format='luks'>" + SECRET + "<frob/></encryption>"),
        "header": plain("<encryption format='luks'>" + SECRET + "<header type='file'><source file='/h'/><frob/>"
                        "</header></encryption>"),
    }.items()}
    refused = {f"refused-{tag}": plain(body) for tag, body in {
        "mirror": "<mirror type='file' file='/m' job='copy'/>", "transient": "<transient/>",
        "geometry": "<geometry cyls='1' heads='1' secs='1'/>", "wwn-on-virtio": "<wwn>0123456789abcdef</wwn>",
        "group-name": "<iotune><group_name>g</group_name></iotune>", "tray": "", "model": "",
        "auth-under-disk": "<auth username='u'><secret type='ceph' usage='x'/></auth>",
        "iotune-max-below": "<iotune><total_bytes_sec>100</total_bytes_sec><total_bytes_sec_max>10"
                            "</total_bytes_sec_max></iotune>",
        "iotune-total-and-read": "<iotune><total_iops_sec>1</total_iops_sec><read_iops_sec>1</read_iops_sec>"
                                 "</iotune>",
        "iotune-too-big": "<iotune><read_bytes_sec>1000000000000001</read_bytes_sec></iotune>",
        "blockio-odd": "<blockio logical_block_size='513'/>",
    }.items()}
    refused["refused-tray"] = plain(target="<target dev='vdb' bus='virtio' tray='open'/>")
    refused["refused-model"] = disk("<source file='/p'/>" + TARGET, extra=" model='virtio-transitional'")
    kinds = {f"kind-{k}": disk(f"<source {a}/>{TARGET}", k) for k, a in {
        "volume": "pool='p' volume='v'", "dir": "dir='/d'", "vhostuser": "path='/s'", "bogus": "file='/p'",
        "nvme-no-address": "type='pci' namespace='1'"}.items()}
    kinds["kind-https"] = disk(f"<source protocol='https' name='x'><host name='h'/></source>{TARGET}", "network")
    kinds["kind-slices"] = plain(source="<source file='/p'><slices><slice type='storage' offset='0' size='0'/>"
                                        "</slices></source>")
    return {**unknown, **refused, **kinds}


def mutation_cases(count: int = 70, seed: int = 20261205) -> dict[str, bytes]:
    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(EXAMPLES.glob("*.xml"))]
    inserts = ["", "'", "<", ">", "/", "0", "١", "\u00e9", "&", "=", "luks2", "librbd", "<iotune>", "..", "//",
               "/dev/fdset/", "<boot order='x'/>", "\x00", "]]>", "<!--", "<?x?>", "&#0;", "&#xD800;"]
    out = {}
    for i in range(count):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randint(0, len(text))
            text = text[:pos] + rng.choice(inserts) + text[pos + rng.randint(0, 12):]
        out[f"mutation-{i}"] = text.encode("utf-8", "surrogatepass")
    return out


def corpus() -> dict[str, bytes]:
    return {**numeric_cases(), **path_cases(), **flood_cases(), **structure_cases(), **mutation_cases()}


def run_case(path: Path, argv: list[str]) -> dict[str, object]:
    """``hotluks ARGV`` in a forked child: exit code, seconds, peak RSS, traceback seen."""
    out, err = path.with_suffix(".out"), path.with_suffix(".err")
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
            signal.alarm(HANG_SECONDS)
            with open(out, "wb") as fo, open(err, "wb") as fe:
                os.dup2(fo.fileno(), 1)
                os.dup2(fe.fileno(), 2)
            from hotluks.cli.main import main

            code = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        except BaseException:  # noqa: BLE001 - report, never return into the parent's code
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    stderr = err.read_text(errors="replace")
    return {"case": path.stem, "argv": argv[:-1], "exit": os.waitstatus_to_exitcode(status), "seconds": seconds,
            "max_rss_kib": usage.ru_maxrss, "traceback": "Traceback" in stderr, "stderr": stderr[-300:]}


def main_runner(directory: Path) -> None:
    import hotluks.cli.main  # noqa: F401 - load once in the parent: children fork from a warm interpreter
    from hotluks.xmlparse import _schema

    _schema()

    commands = (["plan"], ["plan", "--json"], ["cold-cmdline", "--secret", "x=/nonexistent"])
    for i, path in enumerate(sorted(directory.glob("*.xml"))):
        print(json.dumps(run_case(path, [*commands[i % 3], str(path)])), flush=True)


if __name__ == "__main__":
    main_runner(Path(sys.argv[1]))
