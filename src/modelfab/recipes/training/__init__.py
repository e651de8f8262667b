"""Training machinery shared by every recipe: the one `fit` loop."""
