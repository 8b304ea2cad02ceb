"""Training dynamics: metric series read back from a framework's logs, and their plots (``research-plugin plot``)."""
