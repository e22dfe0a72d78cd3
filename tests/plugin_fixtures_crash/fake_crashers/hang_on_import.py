"""Importing this module never finishes: an entry point that hangs while being loaded (IMP-1)."""

import time

time.sleep(3600)

adapter = None   # never reached
