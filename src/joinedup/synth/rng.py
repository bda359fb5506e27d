"""Random streams that make generation deterministic for a seed, however the work is split.

* ``stream(seed, name, *keys)``: a numpy Generator for one named purpose and unit of work (the
  world; one practice's vectorised attribute sampling). A practice is never split between
  workers, so its stream gives the same draws whatever the number of processes.
* ``patient_random(seed, index)``: the per-patient stream, a ``random.Random`` (scalar draws in
  the event loop are several times faster with it than with numpy) seeded from the seed and the
  global patient index alone.

Names are turned into integers with a fixed hash (not Python's ``hash``, which is salted per
process), so streams are the same in every process and on every run.
"""

from __future__ import annotations

import random
import zlib

import numpy as np

_MASK_64 = (1 << 64) - 1


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode())


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for ``name`` (and, e.g., a practice index) under ``seed``."""
    entropy = [seed & _MASK_64, _name_key(name), *keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def patient_seed(seed: int, index: int) -> int:
    """A 64-bit seed for one patient: a SplitMix64 step over (seed, index), so that patients of
    nearby indices get unrelated streams."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK_64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return z ^ (z >> 31)


def patient_random(seed: int, index: int) -> random.Random:
    """The random stream of one patient (scalar draws for its timeline and feed noise)."""
    return random.Random(patient_seed(seed, index))  # noqa: S311 - synthetic data, not secrets
