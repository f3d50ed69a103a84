"""The node: channels, mempool, endorsement, validation, commit, events."""
