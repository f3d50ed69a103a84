"""The network: its genesis configuration, organisations, nodes and applications."""
