"""The ``ledger`` command: its parser, the long-running roles, the read commands and the terminal client."""
