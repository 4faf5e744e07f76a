"""Tiny random models for the demo and the tests, written in the layouts real ones ship in."""
