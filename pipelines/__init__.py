"""Stage definitions and the executors that run them (local and Ray)."""
