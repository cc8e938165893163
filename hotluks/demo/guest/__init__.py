"""A tiny Linux guest (Debian kernel + busybox initramfs) with a serial-console agent.

Used by ``hotluks demo`` and by end-to-end tests: :func:`build_guest` builds
(cached) the kernel and initramfs, :func:`boot_guest` starts QEMU with them and
returns a :class:`BootedGuest` whose ``agent`` lists, hashes, reads and writes
the guest's block devices. Submodules import lazily so the CLI stays fast.
"""
