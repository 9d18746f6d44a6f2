"""zeroserve: zeroserve."""
