"""The event contract: task events, their Avro schemas and encoding, and the JSON values they carry.

Everything else in ledger stands on this layer, and it imports nothing else of ledger.
"""
