"""The scheduler: placement policy (pure) and the loop that applies its decisions."""
