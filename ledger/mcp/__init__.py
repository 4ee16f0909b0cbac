"""MCP on the ledger: the SDK server, the tasks of both protocol generations, push and the read tools."""
