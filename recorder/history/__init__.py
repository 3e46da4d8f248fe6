"""LivePerson's REST services beside the socket: agent public profiles, and the Consumer
Messaging History the log is reconciled against (issue 16)."""
