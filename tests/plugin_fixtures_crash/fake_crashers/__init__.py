"""Fake RMSNorm adapters that kill their process, hang, or return garbage, for
tests/test_isolation.py (found through the dist-info beside this package when
tests/plugin_fixtures_crash is on PYTHONPATH)."""
