"""Caption training for streamcap: datasets, feature cache, training loop, evaluation.

Run from the repository root: ``python -m training.train --help`` and
``python -m training.evaluate --help`` (also ``streamcap train`` / ``streamcap evaluate``).
"""
