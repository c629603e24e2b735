"""One seed for python, numpy and torch."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
