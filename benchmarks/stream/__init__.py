"""The streaming benchmark in its parts: fold, serve and replay, reported in one table (run `__main__`)."""
