"""The imperative shell: run plans against live VMs (journal, lock, rollback, repair)."""
