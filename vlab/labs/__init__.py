"""Lab logic: one module per graded lab, called from the notebooks under ``labs/``."""
