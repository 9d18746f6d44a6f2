"""zeroserve: sim."""
