"""Tests of recorder.db."""
