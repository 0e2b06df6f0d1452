"""The training engine: per-sample state, epoch phases, the training loop, checkpoints and run outputs.

Import the pieces from their modules (``knnmix.engine.loop``, ``knnmix.engine.state``, ...); this package
initialiser stays empty so that method parts can use the state and collectives without import cycles.
"""
