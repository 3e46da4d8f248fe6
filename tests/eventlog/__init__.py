"""Tests of recorder.eventlog."""
