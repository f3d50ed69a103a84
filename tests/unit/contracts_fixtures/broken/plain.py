"""Importable, but its class is not a Contract."""


class Plain:
    pass
