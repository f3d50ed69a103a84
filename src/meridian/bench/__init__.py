"""Load generation and reports (``make bench``)."""
