"""Loading local pretrained weights into a network, strictly except for the classification head.

Nothing is ever downloaded: the caller gives the path of a file written by ``torch.save``, holding either a
state dict or a checkpoint dict with the state dict under ``"state_dict"`` or ``"model"``. A ``"module."``
prefix (DataParallel / DistributedDataParallel) and an ``"_orig_mod."`` prefix (``torch.compile``) are stripped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from torch import Tensor, nn

from knnmix.errors import KnnmixError, listing, load_tensors

#: Keys under which checkpoints commonly nest their state dict, tried in order.
CHECKPOINT_KEYS = ("state_dict", "model")
#: The ``module.`` and ``_orig_mod.`` prefixes stripped from every key, repeatedly, in any order.
STRIP_PREFIXES = re.compile(r"^(?:module\.|_orig_mod\.)+")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a tensor state dict from ``path`` (unwrapping checkpoints, stripping prefixes) without unpickling code."""
    obj = load_tensors(path, "pretrained weights file")
    if isinstance(obj, Mapping):  # a checkpoint holds its state dict under the first of CHECKPOINT_KEYS it has
        obj = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not obj:
        raise KnnmixError(f"pretrained weights {str(path)!r} hold no state dict (got {type(obj).__name__})")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise KnnmixError(f"pretrained weights {str(path)!r} are not a state dict: entry {key!r} is a "
                              f"{type(value).__name__}")
        state[STRIP_PREFIXES.sub("", key)] = value
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, name: str | None = None) -> nn.Module:
    """Copy the weights in ``path`` into ``model`` (called ``name`` in error messages) and return it.

    Every parameter and buffer must match by name and shape, except the classification head (the module named
    by ``model.head_name``), which is left as initialised when the file's head has another shape (e.g. 1000
    ImageNet classes) or is absent. BatchNorm ``num_batches_tracked`` counters absent from old files are
    tolerated. Anything else missing, unexpected or mis-shaped is a :class:`KnnmixError` listing the first few.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head_name: str | None = getattr(model, "head_name", None)
    head_keys = {k for k in own if k.startswith(f"{head_name}.")} if head_name else set()
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    wanted = [k for k in own if head_fits or k not in head_keys]  # a head that does not fit stays as initialised
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in wanted if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]

    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {listing(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if keys
        ]
        model_name = name or type(model).__name__
        raise KnnmixError(f"pretrained weights {str(path)!r} do not fit model {model_name!r}; " + "; ".join(problems))
    model.load_state_dict({k: state[k] for k in wanted if k in state}, strict=False)
    return model
