"""Evaluation: metrics as pure NumPy functions of labels and scores, masks and maps."""
