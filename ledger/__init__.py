"""ledger: a Kafka event-sourced task ledger for MCP servers.

The public API: ``App``, ``Context`` and ``Retry`` for writing tools, ``create_app`` for serving them from your own
ASGI process. ``create_app`` is imported on first use, so a tool module or a read command does not load
the MCP SDK's HTTP stack.
"""

from typing import TYPE_CHECKING, Any

from ledger.engine.app import App
from ledger.engine.context import Context, Elicited, NonDeterminismError
from ledger.engine.retry import Retry

if TYPE_CHECKING:
    from ledger.http.app import create_app

__all__ = ["App", "Context", "Elicited", "NonDeterminismError", "Retry", "create_app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ledger.http.app import create_app
        return create_app
    raise AttributeError(f"module 'ledger' has no attribute {name!r}")
