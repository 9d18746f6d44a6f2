"""zeroserve: activator."""
