"""tasks/ml/pruning.py: unstructured magnitude pruning, structured channel pruning
that physically shrinks CNN and MLP models, and fine-tuning that keeps zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import image_meta, params_section, tiny_spec
from torch import nn

from tasks.contracts.onnx import IMAGE_INPUT
from tasks.ml.models import CNN, MLP, MLPSpec, count_parameters, load_model, save_model
from tasks.ml.pruning import count_nonzero_parameters, fine_tune, prune_structured, prune_unstructured, sparsity
from tasks.onnx.export import export_onnx


def with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norm that is not the identity, as after training, so a pruning that
    sliced the wrong statistics (or none) would change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model.eval()


def cnn(channels=(4, 6), hidden=8, batch_norm=True, seed=0) -> CNN:
    torch.manual_seed(seed)
    spec = tiny_spec(channels=channels, hidden=hidden, n_classes=3)
    if not batch_norm:
        from dataclasses import replace

        spec = replace(spec, batch_norm=False)
    return with_statistics(CNN(spec), seed)


def mlp(layers=(6, 5), batch_norm=True, seed=0) -> MLP:
    torch.manual_seed(seed)
    spec = MLPSpec(
        n_features=4,
        layers=layers,
        n_classes=3,
        dropout=0.2,
        mean=(1.0, 0.0, -1.0, 2.0),
        std=(2.0, 1.0, 0.5, 3.0),
        batch_norm=batch_norm,
    )
    return with_statistics(MLP(spec), seed)


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 16


def rows(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) * 2


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# --------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.8])
def test_layer_pruning_zeroes_that_fraction_of_every_layer(amount):
    model = cnn()
    pruned = prune_unstructured(model, amount, "layer")
    for layer in weight_layers(pruned):
        n = layer.weight.numel()
        assert int((layer.weight == 0).sum()) == round(amount * n)
    total = sum(layer.weight.numel() for layer in weight_layers(model))
    assert sparsity(pruned) == pytest.approx(amount, abs=len(weight_layers(model)) / total)
    assert sparsity(model) == 0.0  # the original is untouched


@pytest.mark.parametrize("amount", [0.25, 0.6])
def test_global_pruning_hits_the_amount_over_all_layers_with_one_threshold(amount):
    model = cnn()
    with torch.no_grad():  # the first conv's weights are 100x larger: a global threshold spares them
        weight_layers(model)[0].weight.mul_(100)
    pruned = prune_unstructured(model, amount, "global")
    total = sum(layer.weight.numel() for layer in weight_layers(model))
    assert sparsity(pruned) == round(amount * total) / total
    per_layer = [float((layer.weight == 0).float().mean()) for layer in weight_layers(pruned)]
    assert per_layer[0] == 0.0 and max(per_layer[1:]) > amount


def test_unstructured_pruning_changes_outputs_not_shapes_and_leaves_no_masks():
    model = cnn()
    pruned = prune_unstructured(model, 0.5, "layer")
    x = images()
    with torch.no_grad():
        before, after = model(x), pruned(x)
    assert before.shape == after.shape
    assert not torch.allclose(before, after)
    assert pruned.state_dict().keys() == model.state_dict().keys()  # no weight_orig / weight_mask left
    for key, value in model.state_dict().items():
        assert pruned.state_dict()[key].shape == value.shape


def test_count_nonzero_parameters_drops_by_the_zeros_pruning_made():
    model = mlp()
    pruned = prune_unstructured(model, 0.5, "global")
    zeros = sum(int((layer.weight == 0).sum()) for layer in weight_layers(pruned))
    assert count_nonzero_parameters(model) == count_parameters(model)
    assert count_nonzero_parameters(pruned) == count_parameters(model) - zeros
    assert zeros > 0


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, float("nan")])
def test_amount_outside_0_1_is_refused_naming_it(amount):
    for prune in (lambda: prune_unstructured(cnn(), amount), lambda: prune_structured(cnn(), amount)):
        with pytest.raises(ValueError, match="amount"):
            prune()


def test_unknown_scope_and_norm_are_refused():
    with pytest.raises(ValueError, match="scope"):
        prune_unstructured(cnn(), 0.5, "row")
    with pytest.raises(ValueError, match="norm"):
        prune_structured(cnn(), 0.5, "l3")


# --------------------------------------------------------------------------- structured


@pytest.mark.parametrize("batch_norm", [True, False])
def test_structured_amount_zero_reproduces_the_outputs_exactly(batch_norm):
    for model, x in ((cnn(batch_norm=batch_norm), images()), (mlp(batch_norm=batch_norm), rows())):
        pruned = prune_structured(model, 0.0)
        assert pruned.spec == model.spec
        with torch.no_grad():
            assert torch.equal(pruned(x), model(x))
        assert pruned is not model


def test_structured_half_keeps_ceil_of_half_the_channels_and_units():
    model = cnn(channels=(5, 7), hidden=9)
    pruned = prune_structured(model, 0.5)
    assert pruned.spec.channels == (3, 4) and pruned.spec.hidden == 5  # ceil(2.5), ceil(3.5), ceil(4.5)
    assert [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)] == [3, 4]
    assert pruned.head[2].out_features == 5
    assert pruned.head[-1].out_features == model.spec.n_classes  # the classifier is never pruned
    assert pruned.spec.input_shape == model.spec.input_shape
    with torch.no_grad():
        assert pruned(images(4)).shape == (4, model.spec.n_classes)
    assert count_parameters(pruned) < count_parameters(model)

    table = prune_structured(mlp(layers=(6, 5)), 0.5)
    assert table.spec.layers == (3, 3)
    assert table.net[-1].out_features == 3 and table.net[1].in_features == 4


def test_a_large_amount_keeps_at_least_one_channel():
    pruned = prune_structured(cnn(channels=(4, 6), hidden=8), 0.99)
    assert pruned.spec.channels == (1, 1) and pruned.spec.hidden == 1
    with torch.no_grad():
        assert torch.isfinite(pruned(images(2))).all()


def masked_copy(model: nn.Module, pruned: nn.Module, norm: str) -> nn.Module:
    """The original with every channel `pruned` dropped silenced in place (its
    batch norm scale and shift, or else its weights and bias, set to 0): it must
    compute what the physically smaller model computes. Which channels survive
    is worked out here independently: the `k` largest filter norms."""
    import copy

    masked = copy.deepcopy(model)
    modules = list(masked.modules())
    widths = [m.weight.shape[0] for m in weight_layers(pruned)[:-1]]
    with torch.no_grad():
        for layer, k in zip(weight_layers(masked)[:-1], widths):
            n = layer.weight.shape[0]
            norms = layer.weight.reshape(n, -1).norm(p=1 if norm == "l1" else 2, dim=1)
            dropped = torch.argsort(norms, descending=True)[k:]
            following = modules[modules.index(layer) + 1]
            if isinstance(following, nn.modules.batchnorm._BatchNorm):
                following.weight[dropped] = 0
                following.bias[dropped] = 0
            else:
                layer.weight[dropped] = 0
                if layer.bias is not None:
                    layer.bias[dropped] = 0
    return masked


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_structured_pruning_equals_silencing_the_dropped_channels(norm, batch_norm):
    """Every fix-up at once: conv inputs, batch norm stats, the Flatten block of
    each kept channel, the dense layer's inputs and biases."""
    for model, x in (
        (cnn(channels=(4, 6), hidden=8, batch_norm=batch_norm), images()),
        (mlp(layers=(6, 5), batch_norm=batch_norm), rows()),
    ):
        pruned = prune_structured(model, 0.5, norm)
        reference = masked_copy(model, pruned, norm)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-5)
            assert not torch.allclose(pruned(x), model(x))


def test_l1_and_l2_rank_channels_differently_on_a_hand_built_model():
    """Unit 0: many small weights (L1 4, L2 2); unit 1: one large weight (L1 3, L2 3);
    unit 2: tiny. Keeping one unit, L1 keeps unit 0 and L2 keeps unit 1."""
    model = MLP(
        MLPSpec(n_features=4, layers=(3,), n_classes=2, dropout=0.0, mean=(0.0,) * 4, std=(1.0,) * 4, batch_norm=False)
    ).eval()
    rows_by_unit = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.0]])
    with torch.no_grad():
        model.net[1].weight.copy_(rows_by_unit)
        model.net[1].bias.copy_(torch.tensor([0.5, -0.5, 0.25]))
        model.net[-1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    for norm, unit in (("l1", 0), ("l2", 1)):
        pruned = prune_structured(model, 0.7, norm)  # ceil(0.3 * 3) = 1 unit
        assert pruned.spec.layers == (1,)
        assert torch.equal(pruned.net[1].weight, rows_by_unit[unit : unit + 1])
        assert torch.equal(pruned.net[1].bias, model.net[1].bias[unit : unit + 1])
        assert torch.equal(pruned.net[-1].weight, model.net[-1].weight[:, unit : unit + 1])
        assert torch.equal(pruned.net[-1].bias, model.net[-1].bias)  # output layer untouched


def test_conv_filters_are_ranked_by_their_own_norm():
    model = cnn(channels=(2,), hidden=4, batch_norm=False)
    with torch.no_grad():
        conv = model.features[1]
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0  # nine ones: L1 9, L2 3
        conv.weight[1, 0, 1, 1] = 5.0  # a single 5: L1 5, L2 5
    assert torch.equal(prune_structured(model, 0.5, "l1").features[1].weight, conv.weight[:1])
    assert torch.equal(prune_structured(model, 0.5, "l2").features[1].weight, conv.weight[1:])


def test_a_pruned_model_round_trips_through_save_and_load(tmp_path):
    pruned = prune_structured(cnn(channels=(4, 6), hidden=8), 0.5)
    save_model(pruned, tmp_path / "pruned")
    loaded = load_model(tmp_path / "pruned")
    assert loaded.spec == pruned.spec and loaded.spec.channels == (2, 3)
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))

    table = prune_structured(mlp(), 0.5)
    save_model(table, tmp_path / "table")
    assert load_model(tmp_path / "table").spec.layers == table.spec.layers


def test_the_exported_onnx_of_a_pruned_model_is_smaller(tmp_path):
    model = cnn(channels=(16, 32), hidden=32)
    pruned = prune_structured(model, 0.5)
    export_onnx(model, model.spec.input_shape, tmp_path / "full.onnx", 17, IMAGE_INPUT)
    export_onnx(pruned, pruned.spec.input_shape, tmp_path / "pruned.onnx", 17, IMAGE_INPUT)
    full_size, pruned_size = (tmp_path / "full.onnx").stat().st_size, (tmp_path / "pruned.onnx").stat().st_size
    assert pruned_size < 0.6 * full_size


def test_structured_pruning_keeps_the_training_mode():
    model = cnn().train()
    assert prune_structured(model, 0.5).training
    assert not prune_structured(model.eval(), 0.5).training


# --------------------------------------------------------------------------- fine-tuning


def test_fine_tune_trains_but_keeps_the_pruned_zeros():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=generator) * 16
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 8).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 8).long()
    pruned = prune_unstructured(cnn(channels=(4, 6), hidden=8), 0.5, "layer")
    before = [layer.weight.detach().clone() for layer in weight_layers(pruned)]
    params = params_section("train", batch_size=32, lr=0.01, patience=5, seed=0)
    result = fine_tune(pruned, (x[:64], y[:64]), (x[64:], y[64:]), F.cross_entropy, params, epochs=2)
    assert result.epochs_run == 2
    after = [layer.weight.detach() for layer in weight_layers(pruned)]
    for old, new in zip(before, after):
        assert torch.equal(new[old == 0], torch.zeros_like(new[old == 0]))  # pruned weights stay 0
    assert any(not torch.equal(old, new) for old, new in zip(before, after))  # the rest trained
    assert sparsity(pruned) == pytest.approx(sum(int((b == 0).sum()) for b in before) / sum(b.numel() for b in before))
    assert set(pruned.state_dict()) == set(cnn().state_dict())  # masks removed again
    assert not math.isnan(result.best_val_loss) and np.isfinite(result.best_val_loss)


def test_unstructured_sweep_reports_sparsity_quality_and_compressed_size():
    import numpy as np

    from tasks.ml.models import CNN, CNNSpec
    from tasks.ml.pruning import unstructured_sweep

    torch.manual_seed(0)
    model = CNN(
        CNNSpec(input_shape=(1, 8, 8), channels=(4,), hidden=8, n_classes=3, dropout=0.0, mean=(8.0,), std=(4.0,))
    ).eval()
    rng = np.random.default_rng(0)
    val = (rng.uniform(0, 16, (30, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 30))
    rows = unstructured_sweep(model, (0.25, 0.75), "global", val, image_meta())
    assert [r["amount"] for r in rows] == [0.25, 0.75]
    assert rows[0]["sparsity"] == pytest.approx(0.25, abs=0.01) and rows[1]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert rows[1]["gzip_bytes"] < rows[0]["gzip_bytes"] < rows[0]["dense_bytes"]
    assert rows[0]["dense_bytes"] == rows[1]["dense_bytes"]  # dense either way: no speed from sparsity


def test_bn_scale_ranking_drops_the_channel_batch_norm_silences_and_weight_norm_keeps():
    """A channel with the largest filter but gamma = 0 contributes only its beta:
    batch-norm-scale ranking drops it, weight-norm ranking keeps it."""
    model = cnn(channels=(4, 6), hidden=8)
    conv, bn = model.features[1], model.features[2]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        conv.weight[2] *= 100.0  # by far the largest filter...
        bn.weight.copy_(torch.tensor([1.0, 0.8, 0.0, 0.9]))  # ...silenced by its batch norm
    by_norm = prune_structured(model, 0.25, "l1", rank="weight_norm")
    by_scale = prune_structured(model, 0.25, "l1", rank="bn_scale")
    assert by_norm.spec.channels[0] == by_scale.spec.channels[0] == 3
    kept_norm = {tuple(w.flatten()[:3].tolist()) for w in by_norm.features[1].weight}
    kept_scale = {tuple(w.flatten()[:3].tolist()) for w in by_scale.features[1].weight}
    big = tuple(conv.weight[2].flatten()[:3].tolist())
    assert big in kept_norm and big not in kept_scale
    assert sorted(by_scale.features[2].weight.tolist()) == pytest.approx([0.8, 0.9, 1.0])


def test_an_unknown_rank_is_refused():
    with pytest.raises(ValueError, match="rank"):
        prune_structured(cnn(), 0.5, rank="gamma")
