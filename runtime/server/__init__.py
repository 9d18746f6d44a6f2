"""zeroserve: runtime/server."""
