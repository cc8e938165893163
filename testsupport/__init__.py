"""Test support, not shipped: fixtures for QEMU, libvirtd, Ceph, NBD and iSCSI servers, the fake QEMU and the fault matrix, shared by tests/, integration/ and bench/."""
