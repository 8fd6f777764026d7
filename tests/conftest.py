"""Fixtures for the project's own tests. The shared session fixtures (`cref`, ...) come from
the project's pytest plugin, harness/pytest_plugin.py, registered as a pytest11 entry point."""
