"""The compute layer: the pool of nodes and devices, the scheduler, and executors."""
