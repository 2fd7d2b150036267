"""Training methods: one :class:`~defectkit.methods.base.Method` class per method (its config,
model, training step, scores, threshold rule and exportable graph), a registry of them and the
one trainer (``trainer.py``) every method runs in."""
