"""recorder: a durable event log for LivePerson Messaging Window API conversations."""

__version__ = "0.1.0"
