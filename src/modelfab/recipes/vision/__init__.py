"""Vision recipes (worker side; imports torch): data, training, evaluation and export
of image models."""
