"""Keeping hotluks disks alive across a VM's lifecycle: placement, hooks, migration support."""
