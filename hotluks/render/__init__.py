"""Render a plan: QMP commands (with secrets bound or redacted), cold-boot argv, listings."""
