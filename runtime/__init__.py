"""zeroserve: runtime."""
