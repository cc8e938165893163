"""An http source (QEMU's curl driver) holding a LUKS volume: the plan's steps make a real QEMU decrypt it.

The server is a small range-capable HTTP server on 127.0.0.1 (QEMU's curl driver reads
with byte ranges), started and stopped by the test.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import start_qemu
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.render.qmp import bound_command
from hotluks.secrets import SecretValue

pytestmark = [pytest.mark.qemu, pytest.mark.cryptsetup]
KEY = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
XML = """<disk type='network' device='disk'>
  <driver name='qemu' type='raw'/>
  <source protocol='http' name='images/volume.luks' query='v=1'>
    <host name='127.0.0.1' port='{port}'/>
  </source>
  <readonly/>
  <encryption format='luks'><secret type='passphrase' uuid='{key}'/></encryption>
  <target dev='vdb' bus='virtio'/>
</disk>
"""


def _handler(root: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def _file(self) -> Path | None:
            path = root / self.path.split("?", 1)[0].lstrip("/")
            return path if path.is_file() else None

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            data = path.read_bytes()
            start, end = 0, len(data) - 1
            spec = self.headers.get("Range", "")
            if spec.startswith("bytes="):
                first, _, last = spec[6:].partition("-")
                start, end = int(first), min(int(last) if last else end, end)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data[start:end + 1])

        def log_message(self, *args: Any) -> None:
            pass

    return RangeHandler


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "www"
    (root / "images").mkdir(parents=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_luks_volume_over_http(images: Any, monitor_for: Any, server: tuple[Path, int]) -> None:
    root, port = server
    vol = images.raw("volume.luks", 4)
    images.luks1(vol)
    images.write_pattern(f"driver=luks,key-secret=sec0,file.driver=file,file.filename={vol}")
    os.replace(vol, root / "images" / "volume.luks")
    plan = build_plan(Disk.from_xml(XML.format(port=port, key=KEY)))
    proto = plan.steps[1].arguments
    assert proto["url"] == f"http://127.0.0.1:{port}/images/volume.luks?v=1" and proto["read-only"] is True
    with start_qemu([], machine="pc") as proc:
        qmp = monitor_for(proc)
        for step in plan.steps:
            cmd = bound_command(step, {KEY: SecretValue(images.passphrase)}, None)
            qmp(cmd["execute"], cmd["arguments"])
        out = qmp.qemu_io(plan.top_node, f"read -P {images.pattern:#x} 0 {images.length}")
        assert f"read {images.length}/{images.length} bytes" in out and "verification failed" not in out, out
