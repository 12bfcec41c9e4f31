"""The allocator: the decision engine (pure) and the service around it (the log in, decisions out)."""
