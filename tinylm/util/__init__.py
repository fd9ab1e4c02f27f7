"""Small shared services: UsageError (errors.py), TinyLM's log format and the one progress
display (log.py), device and precision choice (device.py), atomic file writes (files.py).

Imports nothing else of tinylm; everything else may import it.
"""
