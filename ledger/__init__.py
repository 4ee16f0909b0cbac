"""ledger: a Kafka event-sourced task ledger for MCP servers."""

__version__ = "0.1.0"
