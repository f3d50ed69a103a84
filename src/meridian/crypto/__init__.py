"""Hashing, signing suites, certificates and certificate authorities."""
