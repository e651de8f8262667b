"""Foundation models: the catalog (control plane, no torch) and their loading (worker)."""
