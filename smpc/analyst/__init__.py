"""The analyst: the one driver of a run and its jobs (publish, close, collect, check)."""
