"""The read side: SQL tables, the projector that writes the log into them, and the status read from them."""
