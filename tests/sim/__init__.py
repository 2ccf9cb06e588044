"""Tests of the simulated cloud itself."""
