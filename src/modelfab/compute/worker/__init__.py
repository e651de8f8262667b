"""The job-side runtime. A worker talks to the control plane over HTTP only, with a token
scoped to its job and attempt; it never opens the database."""
