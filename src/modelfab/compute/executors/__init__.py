"""Executors run placed work. Each backend is a package of the same shape as `local`."""
