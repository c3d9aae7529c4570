"""Peer-to-peer model sync: chunked verified transfers between nodes, and placement (docs/sync.md)."""
