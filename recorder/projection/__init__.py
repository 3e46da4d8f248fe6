"""Conversation state from the log: the fold, its rows, the projector that follows the log,
the rebuild that replays it, and their SQL."""

#: The projection's row in projection_positions (exports read the saved position by it).
PROJECTION_NAME = "conversations"
