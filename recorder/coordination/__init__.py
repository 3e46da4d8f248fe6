"""Many instances, one log: instance heartbeats and leases in PostgreSQL (no session state)."""
