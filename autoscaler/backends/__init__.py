"""zeroserve: autoscaler/backends."""
