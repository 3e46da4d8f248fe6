"""Reliability scenarios: the whole daemon against the simulator's faults, on real PostgreSQL.

Every scenario states only its fault; `oracle.py` holds the checks they share (nothing lost,
nothing doubled, positions contiguous, projection = rebuild = the simulator's own state) and
`harness.py` the ways to run the daemon (in-process, or as a real process for `kill -9`).
"""
