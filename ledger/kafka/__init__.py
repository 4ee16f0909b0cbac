"""The log: appending to and reading the task-events topic, topics and brokers (embedded or Apache Kafka)."""
