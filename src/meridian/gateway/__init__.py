"""The gateway: HTTP/JSON API of a node, authenticated by callers' signatures."""
