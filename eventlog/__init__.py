"""The event log port: records, topic names and the log interface, with its Kafka and embedded adapters."""
