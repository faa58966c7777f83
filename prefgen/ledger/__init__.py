"""The ledger: the SQLite record of every unit, and what reads it (inspect, browse)."""
