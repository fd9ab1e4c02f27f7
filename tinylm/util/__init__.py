"""Small shared services: UsageError (util/errors.py), TinyLM's log format and the one progress
display (util/log.py), device and precision choice (util/device.py), atomic file writes (files.py).

Imports nothing else of tinylm; everything else may import it.
"""
