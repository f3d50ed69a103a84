"""Fails at import time."""

import meridian_no_such_module  # noqa: F401
