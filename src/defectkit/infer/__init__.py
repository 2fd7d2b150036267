"""Inference from a run folder."""
