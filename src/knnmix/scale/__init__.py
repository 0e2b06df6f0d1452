"""Scaling out (floor 4): Ray Train (:mod:`.train`), Tune + Optuna sweeps (:mod:`.sweep`) and their MLflow logging
(:mod:`.sweep_mlflow`). Everything that imports Ray lives here; the engine below only sees ``torch.distributed``, and
a single run's MLflow logging (:mod:`knnmix.tracking`) needs no Ray."""
