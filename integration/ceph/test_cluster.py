"""The throwaway cluster itself: start time, port refusal, teardown by PID, and the
preflight's RBD reader against cephx."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from hotluks.rbd_read import RbdLocation, RbdReadError, read_image_head
from testsupport.ceph import CephCluster, CephPortsBusyError

pytestmark = [pytest.mark.ceph]

START_TARGET_SECONDS = 15.0


def test_started_within_target_and_bound_to_loopback(ceph_cluster: CephCluster) -> None:
    assert ceph_cluster.start_seconds is not None
    assert ceph_cluster.start_seconds <= START_TARGET_SECONDS
    status = ceph_cluster.ceph("osd", "dump", "--format", "json")
    assert '"up":1' in status.replace(" ", "")
    # every socket the daemons listen on is on 127.0.0.1
    for pid in ceph_cluster.pids.values():
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        mine = [cols for cols in listening if cols[9] in inodes and cols[3] == "0A"]  # 0A = LISTEN
        assert mine, f"daemon {pid} listens nowhere"
        assert all(cols[1].startswith("0100007F:") for cols in mine), mine
        assert not Path("/proc/net/tcp6").exists() or not any(
            cols[9] in inodes for cols in (line.split() for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]))


def test_second_cluster_on_the_same_ports_is_refused(ceph_cluster: CephCluster) -> None:
    before = set(Path("/tmp").glob("hotluks-ceph-*"))
    other = CephCluster(cephx=False, base_port=ceph_cluster.ports.base)
    with pytest.raises(CephPortsBusyError) as info:
        other.start()
    assert "another Ceph test cluster" in str(info.value)
    assert info.value.exit_code == 2
    assert other.root is None and not other.pids
    assert set(Path("/tmp").glob("hotluks-ceph-*")) == before


@pytest.mark.slow
def test_stop_ends_daemons_by_pid_and_removes_the_directory(ceph_cluster: CephCluster) -> None:
    for offset in range(200, 1200, 100):  # a block no other cluster on this host uses
        try:
            cluster = CephCluster(cephx=False, base_port=ceph_cluster.ports.base + offset).start()
            break
        except CephPortsBusyError:
            continue
    else:
        pytest.fail("no free Ceph port block")
    root, pids = cluster.root, dict(cluster.pids)
    assert root is not None and root.is_dir() and set(pids) == {"mon", "osd"}
    cluster.create_image("scratch", 8)
    cluster.stop()
    assert not root.exists()
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()
    cluster.stop()  # idempotent


def test_rbd_read_with_cephx_user_and_mon_hosts(cephx_cluster: CephCluster, image_name: str) -> None:
    cephx_cluster.create_image(image_name, 8)
    try:
        loc = RbdLocation(pool=cephx_cluster.pool, image=image_name, user=cephx_cluster.client_name,
                          mon_hosts=(f"127.0.0.1:{cephx_cluster.ports.mon_v2}",))
        key = cephx_cluster.client_key.encode()
        assert read_image_head(loc, 4096, key=key) == bytes(4096)
        wrong = bytearray(base64.b64decode(key))
        wrong[-1] ^= 0xFF
        bad_key = base64.b64encode(bytes(wrong))
        with pytest.raises(RbdReadError) as info:
            read_image_head(loc, 4096, key=bad_key)
        assert "cannot read rbd" in str(info.value)
        assert bad_key.decode() not in str(info.value) and key.decode() not in str(info.value)
    finally:
        cephx_cluster.remove_image(image_name)


def test_rbd_read_missing_image(ceph_cluster: CephCluster) -> None:
    loc = RbdLocation(pool=ceph_cluster.pool, image="no-such-image", conf=str(ceph_cluster.conf_path))
    with pytest.raises(RbdReadError) as info:
        read_image_head(loc, 512)
    assert str(info.value) == ("cannot read rbd rbd/no-such-image: rbd: error opening image no-such-image: "
                               "(2) No such file or directory")
