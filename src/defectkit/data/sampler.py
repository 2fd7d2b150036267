"""Which images a training epoch uses: every positive and as many negatives.

The two-stage network's paper draws the negatives by *frequency of use*: from the second
epoch on, negatives used less often so far are more likely to be drawn. Epochs are a pure
function of (labels, seed, epoch): a resumed run replays the history and gets the same order.
"""

from __future__ import annotations

import numpy as np


def frequency_probabilities(counts: np.ndarray) -> np.ndarray:
    """The paper's rule: ``s = 1 - f/max f``, ``s = s - median(s) + 1``, ``p ~ s ** (4 ln N)``."""
    counts = np.asarray(counts, dtype=np.float64)
    peak = counts.max()
    score = 1.0 - counts / peak if peak > 0 else np.ones_like(counts)
    score = score - np.median(score) + 1.0
    weights = score ** (4.0 * np.log(len(counts)))
    return weights / weights.sum()


class EpochSampler:
    """Per-epoch index lists over a training set.

    ``frequency_of_use=False`` draws the negatives uniformly at random instead. With no
    positives every negative is used each epoch (unsupervised training). When there are
    fewer negatives than positives the negatives are drawn in rounds, each without
    replacement."""

    def __init__(self, labels, seed: int = 0, frequency_of_use: bool = True):
        labels = np.asarray(labels).astype(bool)
        self.positives = np.flatnonzero(labels)
        self.negatives = np.flatnonzero(~labels)
        self.seed = seed
        self.frequency_of_use = frequency_of_use
        self._counts = np.zeros(len(self.negatives), dtype=np.int64)
        self._next_epoch = 0

    def __len__(self) -> int:
        """Images per epoch."""
        if len(self.positives) == 0:
            return len(self.negatives)
        return 2 * len(self.positives) if len(self.negatives) else len(self.positives)

    @property
    def usage_counts(self) -> np.ndarray:
        """How often each negative (in dataset order of negatives) was used so far."""
        return self._counts.copy()

    def _draw_negatives(self, rng: np.random.Generator, epoch: int, count: int) -> np.ndarray:
        n = len(self.negatives)
        chosen: list[np.ndarray] = []
        while count > 0 and n:
            take = min(count, n)
            if epoch == 0 or not self.frequency_of_use:
                picked = rng.permutation(n)[:take]
            else:
                picked = rng.choice(n, size=take, replace=False, p=frequency_probabilities(self._counts))
            self._counts[picked] += 1
            chosen.append(picked)
            count -= take
        return self.negatives[np.concatenate(chosen)] if chosen else np.empty(0, dtype=np.int64)

    def epoch(self, epoch: int) -> np.ndarray:
        """Shuffled dataset indices for 0-based ``epoch``."""
        if epoch < self._next_epoch:  # going back: replay from the start
            self._counts[:] = 0
            self._next_epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, self._next_epoch])
            if len(self.positives) == 0:
                indices = self.negatives.copy()
            else:
                indices = np.concatenate([self.positives, self._draw_negatives(rng, self._next_epoch, len(self.positives))])
            rng.shuffle(indices)
            self._next_epoch += 1
            if self._next_epoch > epoch:
                return indices
