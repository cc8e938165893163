"""Keeping detached headers under control: pins recorded on first use, remote header readers."""
