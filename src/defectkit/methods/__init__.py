"""Training methods: each builds its model from a config, fits it into a run folder and scores images."""
