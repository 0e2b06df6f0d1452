"""Scaling out (floor 4): Ray Train (:mod:`.train`), Tune + Optuna sweeps (:mod:`.sweep`, :mod:`.spaces`), MLflow
(:mod:`.tracking`). Everything that imports Ray lives here; the engine below only sees ``torch.distributed``."""
