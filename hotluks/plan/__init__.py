"""Pure planning: a :class:`~hotluks.model.Disk` becomes an ordered list of QMP steps."""
