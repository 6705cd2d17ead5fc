"""End-to-end jobs the CLI runs (each CLI command calls exactly one of these)."""
