"""Helpers of the tests' own."""
