"""The training engine (floor 3): the training loop, run folder, splits and reports.

- :mod:`.train` -- :func:`~knnmix.engine.train.train` and the free functions of one run
- :mod:`.splits` -- from a config to the noisy train / noisy validation / clean test splits
- :mod:`.checkpoint` -- the run folder, safe checkpoint loading, folder locks; :mod:`.report` -- summary and audit

The phases, per-sample state and ``torch.distributed`` helpers it drives live in :mod:`knnmix.methods`.
"""
