"""The book's service: the sequencer, the consume-decide-publish loop, the audit, the clients of the log."""
