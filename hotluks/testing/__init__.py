"""Test-support code (fixtures for QEMU, libvirtd, Ceph) shared by tests and the demo."""
