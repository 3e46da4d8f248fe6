"""Tests of recorder.ums."""
