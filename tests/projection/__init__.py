"""Tests of recorder.projection."""
