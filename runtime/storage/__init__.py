"""zeroserve: runtime/storage."""
