"""Self-contained device runners: each file runs on its own, with its runtime and numpy only."""
