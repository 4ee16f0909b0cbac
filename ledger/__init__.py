"""ledger: a Kafka event-sourced task ledger for MCP servers."""

from ledger.app import App
from ledger.context import Context, Elicited, NonDeterminismError

__all__ = ["App", "Context", "Elicited", "NonDeterminismError"]
__version__ = "0.1.0"
