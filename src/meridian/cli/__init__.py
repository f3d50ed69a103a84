"""The ``meridian`` command."""
