"""The training engine (floor 3): per-sample state, epoch phases, the training loop, checkpoints and reports.

- :mod:`.train` -- :func:`~knnmix.engine.train.train` and the free functions of one run
- :mod:`.phases` -- the named phases that act on the gathered feature bank (correction, mixture fit, search)
- :mod:`.state` -- the index-aligned per-sample state; :mod:`.dist` -- ``torch.distributed`` helpers
- :mod:`.splits` -- from a config to the noisy train / noisy validation / clean test splits
- :mod:`.checkpoint` -- the run folder, safe checkpoint loading, folder locks; :mod:`.report` -- summary and audit
"""
