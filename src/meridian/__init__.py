"""Meridian: an open blockchain-based service network.

Permissioned ledgers (one per application), Python contracts run in sandboxed
workers, an execute-order-validate transaction flow, a signed REST gateway, an SDK
(:mod:`meridian.client`) and the ``meridian`` command.
"""

__version__ = "0.1.0"
