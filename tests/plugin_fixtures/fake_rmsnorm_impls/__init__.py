"""Fake RMSNorm adapters for tests/test_plugin.py (found through the dist-info beside this
package when tests/plugin_fixtures is on PYTHONPATH)."""
