"""Tests of recorder.simulator: the LivePerson simulator."""
