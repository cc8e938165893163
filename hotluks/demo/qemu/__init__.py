"""Starting and stopping local QEMU processes (used by the demo and the test fixtures)."""
