"""zeroserve: autoscaler."""
