"""Conversation state from the log: the fold, its rows, the projector that follows the log,
the rebuild that replays it, and their SQL."""
