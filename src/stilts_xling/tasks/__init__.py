"""Tasks: declarative specs grouped by family (see base.py)."""
