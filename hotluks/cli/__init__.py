"""Command-line interface: one module per command group, all light to import."""
