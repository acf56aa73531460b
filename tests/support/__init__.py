"""Test support shared by the suites (importable as tests.support)."""
