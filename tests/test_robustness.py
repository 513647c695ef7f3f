"""Robustness evaluation: noise at the requested SNR, the conditions, and the mode end to end."""

import json
import logging
import math
import os

import jax
import ml_collections
import numpy as np
import pytest
import train_fixtures

from mbt import branches
from mbt import models
from mbt import robustness
from mbt import train


@pytest.mark.parametrize("snr_db", [20.0, 10.0, 5.0, 0.0, -5.0])
@pytest.mark.parametrize("shape", [(3, 4, 16, 16, 3), (5, 32, 16, 1), (2, 4096)])
def test_noise_is_added_at_the_requested_snr(snr_db, shape):
    rng = np.random.default_rng(0)
    # Different scales and a non-zero mean per example: the power must be per example.
    scales = np.arange(1, shape[0] + 1).reshape((-1,) + (1,) * (len(shape) - 1))
    clean = (rng.normal(size=shape) * scales + 0.3 * scales).astype(np.float32)
    noisy = robustness.add_white_noise(clean, snr_db, np.random.default_rng(1))
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    np.testing.assert_allclose(robustness.measured_snr_db(clean, noisy), snr_db, atol=0.1)
    noise = (noisy - clean).reshape(shape[0], -1)
    # Zero-mean, not constant, and independent of the signal.
    assert np.all(np.abs(noise.mean(axis=1)) < 0.2 * noise.std(axis=1))
    assert abs(np.corrcoef(noise.ravel(), clean.reshape(shape[0], -1).ravel())[0, 1]) < 0.2


def test_noise_is_deterministic_skips_zero_examples_and_infinity_is_clean():
    clean = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    clean[1] = 0.0
    first = robustness.add_white_noise(clean, 0.0, np.random.default_rng(7))
    again = robustness.add_white_noise(clean, 0.0, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[1], 0.0)
    assert not np.allclose(first[0], clean[0])
    np.testing.assert_array_equal(
        robustness.add_white_noise(clean, math.inf, np.random.default_rng(7)), clean
    )


def test_conditions_cover_every_target_snr_and_missing_modality():
    both = robustness.make_conditions(("rgb", "spectrogram"))
    names = [c.name for c in both]
    assert names[0] == "clean" and len(both) == 1 + 3 * 5 + 2
    assert "video noise -5 dB" in names and "both noise 20 dB" in names
    by_name = {c.name: c for c in both}
    assert by_name["audio noise 0 dB"].noised == ("spectrogram",)
    assert by_name["both noise 0 dB"].noised == ("rgb", "spectrogram")
    assert by_name["no video (zeros)"].dropped == ("rgb",)
    assert by_name["no video (zeros)"].removal == "zeros"
    assert by_name["audio noise 0 dB"].removal is None
    batch = {
        "rgb": np.ones((2, 3), np.float32),
        "spectrogram": np.ones((2, 4), np.float32),
        "label": np.eye(2, dtype=np.float32),
    }
    out = by_name["no audio (zeros)"].apply(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out["spectrogram"], 0.0)
    np.testing.assert_array_equal(out["rgb"], 1.0)
    np.testing.assert_array_equal(out["label"], batch["label"])
    audio_only = robustness.make_conditions(("spectrogram",))
    assert [c.target for c in audio_only] == ["none"] + ["audio"] * 5  # no 'both', no removal


@pytest.mark.parametrize("model_name, token_drop", [("mbt", True), ("sft", True), ("clstm", False)])
def test_token_dropping_conditions_only_for_models_that_support_it(model_name, token_drop):
    conditions = robustness.make_conditions(("rgb", "spectrogram"), model_name=model_name)
    removed = [(c.name, c.target, c.dropped, c.removal) for c in conditions if c.dropped]
    expected = [
        ("no audio (zeros)", "no audio", ("spectrogram",), "zeros"),
        ("no video (zeros)", "no video", ("rgb",), "zeros"),
    ]
    if token_drop:
        expected.insert(1, ("no audio (dropped tokens)", "no audio", ("spectrogram",), "tokens"))
        expected.append(("no video (dropped tokens)", "no video", ("rgb",), "tokens"))
    assert removed == expected
    batch = {"rgb": np.ones((2, 3), np.float32), "spectrogram": np.ones((2, 4), np.float32)}
    if token_drop:
        dropped = next(c for c in conditions if c.removal == "tokens")
        assert sorted(dropped.apply(batch, np.random.default_rng(0))) == ["rgb"]


def test_sft_branch_is_the_trained_model_on_one_modality():
    """SFT without rgb tokens: the spectrogram's own stages, the joint blocks and the head."""
    config = train_fixtures.tiny_sft_model_config()
    meta = train_fixtures.InMemoryData().meta
    model = models.build_model(config, meta.num_classes)
    rng = np.random.default_rng(0)
    inputs = {m: rng.normal(size=(2,) + s).astype(np.float32) for m, s in meta.input_shapes.items()}
    # Random values everywhere (not the zero-initialised CLS and head), so that a CLS or block
    # taken from the wrong modality shows.
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), inputs)[
        "params"
    ]
    params = jax.tree_util.tree_map(
        lambda x: (rng.normal(size=x.shape) * 0.5).astype(np.float32), shapes
    )
    # Rows 0-1: the inputs; rows 2-3: the same with rgb zeros (examples do not interact).
    both = {
        "spectrogram": np.concatenate([inputs["spectrogram"]] * 2),
        "rgb": np.concatenate([inputs["rgb"], np.zeros_like(inputs["rgb"])]),
    }
    full_logits, full_state = jax.jit(
        lambda p, x: model.apply({"params": p}, x, train=False, mutable=["intermediates"])
    )(params, both)
    branch, branch_params = branches.branch_model(
        config, meta.num_classes, meta.input_shapes, params, ("spectrogram",)
    )
    assert branch.modalities == ("spectrogram",)
    assert branch_params["cls"] is params["clsspectrogram"]
    assert "embedding" not in branch_params and "encoderblock_0" not in branch_params["Transformer"]
    logits, state = jax.jit(
        lambda p, x: branch.apply({"params": p}, x, train=False, mutable=["intermediates"])
    )(branch_params, {"spectrogram": inputs["spectrogram"]})
    assert logits.shape == (2, meta.num_classes) and np.all(np.isfinite(logits))
    # The branch's fused CLS is the spectrogram CLS the full model computed before the sum.
    np.testing.assert_allclose(
        state["intermediates"]["Transformer"]["fused_cls"][0],
        full_state["intermediates"]["Transformer"]["cls_at_fusion"][0]["spectrogram"][:2],
        rtol=1e-5,
        atol=1e-5,
    )
    assert not np.allclose(logits, full_logits[2:], atol=1e-3)  # dropping tokens != zeroing


def test_clstm_has_no_token_dropping_and_the_table_says_so():
    config = ml_collections.ConfigDict({"name": "clstm", "modalities": ("rgb", "spectrogram")})
    meta = train_fixtures.InMemoryData().meta
    with pytest.raises(ValueError, match="'clstm' cannot run a subset"):
        branches.branch_model(config, meta.num_classes, meta.input_shapes, {}, ("rgb",))
    rows = [
        {
            "name": c.name,
            "target": c.target,
            "snr_db": None if c.target == "none" else c.snr_db,
            "dropped": list(c.dropped),
            "removal": c.removal,
            "metrics": {"top1": 0.5},
        }
        for c in robustness.make_conditions(("rgb", "spectrogram"), model_name="clstm")
    ]
    table = robustness.markdown_table(
        {
            "metric": "top1",
            "conditions": rows,
            "model": "clstm",
            "modalities": ["rgb", "spectrogram"],
            "step": 1,
            "split": "test",
            "snrs_db": list(robustness.SNRS_DB),
        }
    )
    assert "| audio (spectrogram) | 0.5000 | – |" in table
    assert "removal by zeros only" in table


def _branch_reference(config, data, params, split, kept):
    """Loss and top-1 of `mbt.branches.branch_model` on the eval split, computed here directly."""
    meta = data.meta
    model, branch_params = branches.branch_model(
        config.model, meta.num_classes, meta.input_shapes, jax.device_get(params), kept
    )
    losses, correct = [], []
    for batch in data.batches(split, "eval", config.eval_batch_size, seed=int(config.seed)):
        logits = np.asarray(
            model.apply({"params": branch_params}, {m: batch[m] for m in kept}, train=False),
            np.float64,
        )
        log_probs = (
            logits
            - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True))
            - logits.max(1, keepdims=True)
        )
        real = batch["batch_mask"] > 0
        labels = batch["label"].argmax(1)
        losses += list(-log_probs[np.arange(len(labels)), labels][real])
        correct += list((logits.argmax(1) == labels)[real])
    return float(np.mean(losses)), float(np.mean(correct))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("robustness"))
    config = train_fixtures.tiny_config(num_train_steps=8)
    data = train_fixtures.InMemoryData(noise=0.3)
    train.train_and_evaluate(config, workdir, data)
    return config, workdir, data


def test_robustness_mode_writes_json_table_and_plot(trained, caplog):
    config, workdir, data = trained
    with caplog.at_level(logging.INFO, logger="mbt.robustness"):
        report = robustness.run_robustness(config, workdir, data)
    # It says where its files are.
    assert any(
        "robustness results written to" in r.getMessage()
        and os.path.join(workdir, "robustness.png") in r.getMessage()
        for r in caplog.records
    ), caplog.text
    rows = {r["name"]: r for r in report["conditions"]}
    assert len(rows) == 20 and report["metric"] == "top1" and report["step"] == 8
    assert report["removals"] == ["zeros", "tokens"]
    # The clean condition is exactly the restored checkpoint's single-view evaluation.
    reference = train.evaluate(config, workdir, "evaluate", data)
    assert rows["clean"]["metrics"]["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert rows["clean"]["metrics"]["top1"] == reference["top1"]
    # Noise and missing inputs reach the model: the loss moves, more at lower SNR.
    clean_loss = rows["clean"]["metrics"]["loss"]
    assert rows["both noise -5 dB"]["metrics"]["loss"] != pytest.approx(clean_loss, rel=1e-4)
    assert rows["no video (zeros)"]["metrics"]["loss"] != pytest.approx(clean_loss, rel=1e-4)
    # Dropped tokens = the single-branch model (`mbt.branches`), evaluated directly; not zeros.
    params, _ = train.restore_params(train.get_setup(config, data), workdir)
    for target, kept in (("video", ("spectrogram",)), ("audio", ("rgb",))):
        dropped = rows[f"no {target} (dropped tokens)"]
        assert dropped["removal"] == "tokens" and dropped["metrics"]["num_views"] == 10
        loss, top1 = _branch_reference(config, data, params, report["split"], kept)
        assert dropped["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)
        assert dropped["metrics"]["top1"] == pytest.approx(top1)
        zeros = rows[f"no {target} (zeros)"]["metrics"]["loss"]
        assert dropped["metrics"]["loss"] != pytest.approx(zeros, rel=1e-4)
    assert abs(rows["both noise -5 dB"]["metrics"]["loss"] - clean_loss) > abs(
        rows["both noise 20 dB"]["metrics"]["loss"] - clean_loss
    )

    with open(os.path.join(workdir, "robustness.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert [r["name"] for r in saved["conditions"]] == [r["name"] for r in report["conditions"]]
    assert saved["conditions"][0]["snr_db"] is None and saved["snrs_db"] == [20, 10, 5, 0, -5]
    with open(os.path.join(workdir, "robustness.md"), encoding="utf-8") as f:
        table = f.read()
    assert "| video | " in table and "| -5 dB |" in table
    zeros, tokens = (
        f"{rows[f'no audio ({k})']['metrics']['top1']:.4f}" for k in ("zeros", "dropped tokens")
    )
    assert f"| audio (spectrogram) | {zeros} | {tokens} |" in table
    assert saved["removals"] == ["zeros", "tokens"]
    assert {r["removal"] for r in saved["conditions"]} == {None, "zeros", "tokens"}
    with open(os.path.join(workdir, "robustness.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_robustness_without_a_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*train first"):
        robustness.run_robustness(
            train_fixtures.tiny_config(), str(tmp_path), train_fixtures.InMemoryData(), plot=False
        )


def test_noise_lines_stay_visible_when_their_values_coincide(tmp_path):
    """Each noised target has its own marker and dashes, and the later-drawn lines are thinner
    with smaller hollow markers, so equal curves still show every line."""
    styles = [robustness.NOISE_LINE_STYLES[t] for t in robustness.TARGETS]
    assert set(robustness.NOISE_LINE_STYLES) == set(robustness.TARGETS)
    assert len({(s["marker"], s["linestyle"]) for s in styles}) == len(styles)
    sizes = [s["markersize"] for s in styles]
    widths = [s["linewidth"] for s in styles]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
    assert all(s["markerfacecolor"] == "none" for s in styles)
    # A report whose three noise curves are identical still plots.
    rows = [
        {
            "target": "none",
            "snr_db": None,
            "dropped": None,
            "name": "clean",
            "metrics": {"top1": 0.9},
        }
    ]
    rows += [
        {
            "target": t,
            "snr_db": snr,
            "dropped": None,
            "name": f"{t} {snr}",
            "metrics": {"top1": 0.5},
        }
        for t in robustness.TARGETS
        for snr in (10.0, 0.0)
    ]
    report = {"metric": "top1", "conditions": rows, "snrs_db": [10.0, 0.0], "model": "mbt"}
    robustness.plot_report(report, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 5_000
