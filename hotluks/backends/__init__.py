"""Ways to talk to a VM's QEMU monitor: QMP socket, libvirt-python, virsh."""
