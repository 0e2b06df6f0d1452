"""Tests of knnmix.models: the (logits, features) contract, sizes, parameter counts, pretrained loading, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from knnmix.errors import KnnmixError
from knnmix.models import MODELS, build_model, count_parameters
from knnmix.models.small_cnn import SmallCNN

#: (in_channels, image_size) used to exercise each registered network quickly.
SMALL_INPUT = {
    "small_cnn": (3, 32),
    "preact_resnet18": (3, 32),
    "preact_resnet34": (1, 28),
    "resnet50": (3, 64),
}
EXPECTED_FEATURE_DIM = {"small_cnn": 64, "preact_resnet18": 512, "preact_resnet34": 512, "resnet50": 2048}


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_every_registered_model_is_covered() -> None:
    assert set(MODELS.names()) == set(SMALL_INPUT)


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_forward_contract_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    in_channels, size = SMALL_INPUT[name]
    model = build_model(name, 7, in_channels, size)
    model.train()
    x = torch.randn(2, in_channels, size, size)
    logits, features = model(x)

    assert logits.shape == (2, 7)
    assert isinstance(model.feature_dim, int)
    assert features.shape == (2, model.feature_dim)
    assert model.feature_dim == EXPECTED_FEATURE_DIM[name]
    # The features are the penultimate layer: the network's final linear layer maps them to the logits.
    head = last_linear(model)
    assert head is model.head
    assert head.out_features == 7 and head.in_features == model.feature_dim
    torch.testing.assert_close(head(features), logits)

    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 6])).backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert first_conv(model).in_channels == in_channels


@pytest.mark.parametrize(
    ("in_channels", "size", "final_side"),
    [(1, 8, 4), (1, 28, 7), (3, 32, 8)],
)
def test_small_cnn_input_sizes(in_channels: int, size: int, final_side: int) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels, size)
    assert isinstance(model, SmallCNN)
    x = torch.randn(4, in_channels, size, size)
    # Pooling adapts to the input: 8x8 is pooled once (to 4x4), never to nothing.
    assert model.features(x).shape[-2:] == (final_side, final_side)
    logits, features = model(x)
    assert logits.shape == (4, 10) and features.shape == (4, model.feature_dim)
    assert torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        eval_logits, _ = model(x)
    assert eval_logits.shape == (4, 10)


def test_small_cnn_channels_last_matches_channels_first() -> None:
    torch.manual_seed(0)
    fast = SmallCNN(10, 3, 32)
    plain = SmallCNN(10, 3, 32, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert fast.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.features[0].weight.is_contiguous()
    x = torch.randn(3, 3, 32, 32)
    for model in (fast, plain):
        model.eval()
    with torch.no_grad():
        a, fa = fast(x)
        b, fb = plain(x)
        c, _ = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("preact_resnet18", 11.1e6, 11.3e6), ("preact_resnet34", 21.2e6, 21.4e6)],
)
def test_preact_resnet_parameter_counts_match_literature(name: str, low: float, high: float) -> None:
    assert low < count_parameters(build_model(name, 10, 3, 32)) < high


def test_resnet50_matches_torchvision_layout() -> None:
    from torchvision.models import resnet50

    ours = build_model("resnet50", 5, 3, 224)
    reference = resnet50(weights=None)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    ref_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours_shapes.keys() == ref_shapes.keys()
    assert {k for k in ref_shapes if ours_shapes[k] != ref_shapes[k]} == {"fc.weight", "fc.bias"}
    assert ours_shapes["fc.weight"] == (5, 2048)


# --- pretrained weights -------------------------------------------------------------------------------------------


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(("name", "in_channels", "size"), [("small_cnn", 1, 28), ("resnet50", 3, 64)])
def test_pretrained_backbone_loads_and_head_stays_fresh(
    tmp_path: Path, name: str, in_channels: int, size: int
) -> None:
    torch.manual_seed(123)
    source = build_model(name, 1000, in_channels, size)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = _save(source.state_dict(), tmp_path / "weights.pth")

    torch.manual_seed(7)
    fresh = build_model(name, 10, in_channels, size)
    torch.manual_seed(7)
    loaded = build_model(name, 10, in_channels, size, pretrained=str(path))

    head_name = loaded.head_name
    for key, value in loaded.state_dict().items():
        if key.startswith(head_name + "."):
            assert value.shape[0] == 10
            torch.testing.assert_close(value, fresh.state_dict()[key])  # freshly initialised, not loaded
        else:
            assert torch.equal(value, saved[key]), key
    assert loaded.head.out_features == 10


def test_pretrained_with_module_prefix_in_checkpoint(tmp_path: Path) -> None:
    source = build_model("small_cnn", 10, 1, 28)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    path = _save(wrapped, tmp_path / "ckpt.pt")
    loaded = build_model("small_cnn", 10, 1, 28, pretrained=path)
    # Same number of classes: the head is loaded too.
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_model_key_and_missing_batchnorm_counters(tmp_path: Path) -> None:
    source = build_model("preact_resnet18", 10, 3, 32)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = _save({"model": state}, tmp_path / "old.pth")
    loaded = build_model("preact_resnet18", 10, 3, 32, pretrained=path)
    assert torch.equal(loaded.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_pretrained_path_may_start_with_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.pretrained='~/w.pt' from a config file or --set (no shell expands it): 'not found' in a single-process
    run before (Ray runs already expanded it), as data.root expands '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    source = build_model("small_cnn", 10, 1, 28)
    _save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_model("small_cnn", 10, 1, 28, pretrained="~/w.pt")
    assert torch.equal(loaded.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_pretrained_other_architecture_lists_keys(tmp_path: Path) -> None:
    path = _save(build_model("small_cnn", 10, 3, 32).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(KnnmixError, match=r"missing: .*conv1\.weight.*unexpected: .*features\.0\.weight") as info:
        build_model("preact_resnet18", 10, 3, 32, pretrained=path)
    message = str(info.value)
    assert "\n" not in message and "preact_resnet18" in message and "more)" in message


def test_pretrained_mis_shaped_backbone_key(tmp_path: Path) -> None:
    path = _save(build_model("small_cnn", 10, 1, 28).state_dict(), tmp_path / "gray.pth")
    pattern = r"mis-shaped: features\.0\.weight \(file \(\d+, 1, 3, 3\), model \(\d+, 3, 3, 3\)\)"
    with pytest.raises(KnnmixError, match=pattern):
        build_model("small_cnn", 10, 3, 32, pretrained=path)


def test_pretrained_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet50-0676ba61.pth"
    with pytest.raises(KnnmixError, match="not found") as info:
        build_model("small_cnn", 10, 1, 28, pretrained=missing)
    assert str(missing) in str(info.value)


def test_pretrained_file_without_state_dict(tmp_path: Path) -> None:
    path = _save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(KnnmixError, match="no state dict"):
        build_model("small_cnn", 10, 1, 28, pretrained=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(KnnmixError, match="cannot read pretrained weights"):
        build_model("small_cnn", 10, 1, 28, pretrained=garbage)


# --- errors -------------------------------------------------------------------------------------------------------


def test_unknown_model_name() -> None:
    with pytest.raises(KnnmixError, match=r"unknown model 'preact_resnet19'.*did you mean 'preact_resnet18'"):
        build_model("preact_resnet19", 10, 3, 32)


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "size", "pattern"),
    [
        ("small_cnn", 1, 1, 28, r"num_classes must be an integer >= 2, got 1"),
        ("small_cnn", True, 1, 28, r"num_classes .* got True"),
        ("preact_resnet18", 10, 0, 32, r"in_channels must be an integer >= 1, got 0"),
        ("small_cnn", 10, 1, 4, r"'small_cnn': image_size must be an integer >= 8 .* got 4"),
        ("preact_resnet34", 10, 3, 7, r"'preact_resnet34': image_size .* got 7"),
        ("resnet50", 10, 3, 28, r"'resnet50': image_size must be an integer >= 32 .* got 28"),
    ],
)
def test_bad_sizes_are_user_errors(name: str, num_classes: int, in_channels: int, size: int, pattern: str) -> None:
    with pytest.raises(KnnmixError, match=pattern):
        build_model(name, num_classes, in_channels, size)
    with pytest.raises(KnnmixError, match=pattern):  # the registered factory checks too
        MODELS.get(name)(num_classes, in_channels, size)
