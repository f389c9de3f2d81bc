"""The log side: Kafka clients, topics, appending and reading the log, and the workers."""
