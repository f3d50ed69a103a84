"""The ledger: block store, versioned state, indexes, Merkle proofs, verification."""
