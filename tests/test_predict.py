"""mbt.predict end to end on real media files: a tiny exported MBT, the JSON output against the
input pipeline's own test views and a direct model call, single-branch runs for files without
audio or video, a Scenic checkpoint with a class names file, failing files, and the CLI."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import predict_fixtures as fx
import pytest
from test_scenic_checkpoint import write_scenic_checkpoint

from mbt import branches
from mbt import evaluate
from mbt import export
from mbt import models
from mbt import predict
from mbt.data import media
from mbt.data import pipeline
from mbt.data import sources
from mbt.pretrained import formats

TOP_K = 3


def run_main(argv):
    """`predict.main(argv)` → (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = predict.main(argv)
    return code, out.getvalue(), err.getvalue()


def softmax(logits):
    return evaluate.split_softmax(np.asarray(logits, np.float64)[None], None)[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An exported tiny MBT in <workdir>/export, media files, and one CLI run over all files."""
    root = tmp_path_factory.mktemp("predict")
    config = fx.tiny_config()
    model = models.build_model(config.model, len(fx.CLASS_NAMES))
    params = fx.random_params(model)
    workdir = root / "workdir"
    export.save_export(export.default_export_dir(workdir), params, config, fx.dataset_meta())
    files = {
        "clip": fx.write_media(root, "clip.mp4", 2.0, seed=0),  # 2 windows x 3 crops
        "short": fx.write_media(root, "short.mp4", 0.5, seed=1),  # shorter than a window
        "no_audio": fx.write_media(root, "silent.mp4", 1.0, audio=False, seed=2),
        "wav": fx.write_media(root, "tone.wav", 1.5, video=False, seed=3),
        "missing": str(root / "missing.mp4"),
        "broken": str(root / "broken.mp4"),
    }
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    # 6 views per file in calls of 4: the second call is padded (and trimmed).
    code, out, err = run_main(
        [
            "--export_dir",
            str(workdir / "export"),
            "--json",
            "--top_k",
            str(TOP_K),
            "--batch_size",
            "4",
        ]
        + list(files.values())
    )
    records = [json.loads(line) for line in out.splitlines()]
    by_file = {r["file"]: r for r in records}
    return dict(
        root=root,
        workdir=workdir,
        config=config,
        model=model,
        params=params,
        files=files,
        code=code,
        records=records,
        by_file=by_file,
        stderr=err,
    )


def pipeline_views(path, config):
    """The input pipeline's test views of `path`, stored the way the builders store a clip
    (frames at 10 fps, short side 64, padded to round(duration x fps); 16 kHz audio)."""
    duration = media.probe(path).duration_s
    frames = media.read_frames(path, 0.0, duration, fps=fx.FPS, short_side=fx.SHORT_SIDE)
    count = int(round(duration * fx.FPS))
    frames = np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), 0)])[:count]
    example = {
        "rgb": frames,
        "audio": media.read_audio(path, 0.0, duration, 16000),
        "label": np.int64(0),
    }
    source = sources.memory_source({"test": [example]}, class_names=fx.CLASS_NAMES, fps=fx.FPS)
    views = 2 * 3
    batch = next(
        pipeline.build_tf_dataset(
            config, "test", "test", views, source=source, process_index=0, process_count=1
        ).as_numpy_iterator()
    )
    assert batch["batch_mask"].tolist() == [1.0] * views
    return {m: batch[m] for m in ("rgb", "spectrogram")}


@pytest.mark.parametrize("name", ["clip", "short"])
def test_json_top_k_matches_the_model_on_the_pipelines_test_views(run, name):
    path = run["files"][name]
    record = run["by_file"][path]
    assert record["modalities"] == ["rgb", "spectrogram"] and record["num_views"] == 6
    assert record["score"] == "softmax" and record["warnings"] == []

    reference = pipeline_views(path, run["config"])
    predictor = predict.predictor_from_export(str(run["workdir"] / "export"))
    views = predict.file_views(path, predictor)
    for m in ("rgb", "spectrogram"):
        np.testing.assert_allclose(views.inputs[m], reference[m], atol=1e-6, err_msg=m)
    # The views really differ (time windows, crops): they are not one view repeated.
    assert np.abs(reference["rgb"][0] - reference["rgb"][2]).max() > 0.05
    if name == "clip":
        assert np.abs(reference["spectrogram"][0] - reference["spectrogram"][5]).max() > 0.05

    logits = np.asarray(fx.jitted_apply(run["model"])(run["params"], reference))
    probs = softmax(logits.mean(axis=0))
    order = np.argsort(-probs)[:TOP_K]
    assert [r["class"] for r in record["top_k"]] == [fx.CLASS_NAMES[i] for i in order]
    assert [r["index"] for r in record["top_k"]] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in record["top_k"]], probs[order], rtol=1e-5)


def branch_params(params, modality):
    """The single-modality parameter tree, written out by hand from the naming rules."""
    flat = formats.flatten(params)
    if modality == "rgb":
        kept = {k: v for k, v in flat.items() if "spectrogram" not in k and k != "bottleneck"}
    else:
        kept = {
            k: v
            for k, v in flat.items()
            if k.startswith(("output_projection", "Transformer/encoder_norm")) or "spectrogram" in k
        }
        kept["cls"] = kept.pop("clsspectrogram")
    return formats.unflatten(kept)


@pytest.mark.parametrize("name, modality", [("no_audio", "rgb"), ("wav", "spectrogram")])
def test_a_file_lacking_a_stream_runs_the_other_branch_with_a_warning(run, name, modality):
    path = run["files"][name]
    record = run["by_file"][path]
    assert record["modalities"] == [modality]
    lacking = "audio track" if modality == "rgb" else "video stream"
    assert record["warnings"] == [f"{path}: no {lacking}; running the {modality} branch only"]
    assert f"warning: {path}: no {lacking}" in run["stderr"]

    predictor = predict.predictor_from_export(str(run["workdir"] / "export"))
    views = predict.file_views(path, predictor)
    assert views.provided == (modality,)
    branch_config = fx.tiny_config().model
    branch_config.modalities = (modality,)
    branch = models.build_model(branch_config, len(fx.CLASS_NAMES))
    logits = np.asarray(
        fx.jitted_apply(branch)(
            branch_params(run["params"], modality), {modality: views.inputs[modality]}
        )
    )
    probs = softmax(logits.mean(axis=0))
    order = np.argsort(-probs)[:TOP_K]
    assert [r["class"] for r in record["top_k"]] == [fx.CLASS_NAMES[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in record["top_k"]], probs[order], rtol=1e-5)


def test_missing_and_undecodable_files_are_named_and_the_rest_predicted(run):
    files = run["files"]
    assert run["code"] == 1
    assert [r["file"] for r in run["records"]] == list(files.values())
    for name in ("missing", "broken"):
        record = run["by_file"][files[name]]
        assert set(record) == {"file", "error"} and files[name] in record["error"]
        assert "error: " in run["stderr"] and files[name] in run["stderr"]
    assert "media file not found" in run["by_file"][files["missing"]]["error"]
    assert "2 of 6 files failed" in run["stderr"]
    assert all("top_k" in run["by_file"][files[n]] for n in ("clip", "short", "no_audio", "wav"))


def test_scenic_checkpoint_with_class_names_file_gives_the_exports_scores(run, tmp_path):
    checkpoint = write_scenic_checkpoint(tmp_path / "scenic", run["params"], 500, "params")
    dataset = json.dumps(run["config"].dataset.to_dict())
    (tmp_path / "config.py").write_text(
        textwrap.dedent(f"""\
        import json
        import ml_collections

        def get_config():
            config = ml_collections.ConfigDict()
            config.model = ml_collections.ConfigDict({{"fusion_layer": 1}})
            config.dataset = ml_collections.ConfigDict(json.loads({dataset!r}))
            return config
        """)
    )
    names = [f"sound {i}" for i in range(6)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    clip = run["files"]["clip"]
    code, out, err = run_main(
        [
            "--checkpoint",
            str(tmp_path / "scenic"),
            "--config",
            str(tmp_path / "config.py"),
            "--class_names",
            str(tmp_path / "names.txt"),
            "--json",
            "--top_k",
            str(TOP_K),
            clip,
        ]
    )
    assert code == 0, err
    record = json.loads(out)
    want = run["by_file"][clip]["top_k"]
    assert [r["class"] for r in record["top_k"]] == [names[r["index"]] for r in want]
    np.testing.assert_allclose(
        [r["score"] for r in record["top_k"]], [r["score"] for r in want], rtol=1e-6
    )
    assert checkpoint.name == "checkpoint_500"

    # Without the fusion layer the checkpoint cannot be read: the error says what to set.
    (tmp_path / "bare.py").write_text(
        "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict()\n"
    )
    code, out, err = run_main(
        ["--scenic_checkpoint", str(checkpoint), "--config", str(tmp_path / "bare.py"), clip]
    )
    assert code == 2 and "config.model.fusion_layer" in err and out == ""
    # A class names file of the wrong length is named.
    (tmp_path / "few.txt").write_text("a\nb\n")
    code, _, err = run_main(
        [
            "--scenic_checkpoint",
            str(checkpoint),
            "--config",
            str(tmp_path / "config.py"),
            "--class_names",
            str(tmp_path / "few.txt"),
            clip,
        ]
    )
    assert code == 2 and "few.txt has 2 names but the checkpoint" in err


def test_cli_subprocess_with_workdir_prints_text_and_fails_on_missing_file(run):
    clip, missing = run["files"]["clip"], run["files"]["missing"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbt.predict",
            f"--workdir={run['workdir']}",
            "--top_k=2",
            missing,
            clip,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    want = run["by_file"][clip]["top_k"]
    assert lines[0] == f"{clip}  (rgb+spectrogram, 6 views, softmax)"
    assert lines[1:] == [f"  {r['score']:.4f}  {r['class']}" for r in want[:2]]
    assert f"error: media file not found: {missing}" in done.stderr


def test_class_names_from_audioset_csv_or_lines(tmp_path):
    csv_path = tmp_path / "class_labels_indices.csv"
    csv_path.write_text(
        'index,mid,display_name\n1,/m/0b,"Bell, bicycle"\n'
        '0,/m/09x0r,"Speech"\n2,/t/dd00088,"Owl hoot"\n'
    )
    assert predict.read_class_names(str(csv_path)) == ("Speech", "Bell, bicycle", "Owl hoot")
    txt = tmp_path / "names.txt"
    txt.write_text("take\r\n\r\nput down\r\n")
    assert predict.read_class_names(str(txt)) == ("take", "put down")
    (tmp_path / "gap.csv").write_text("index,mid,display_name\n0,a,A\n2,c,C\n")
    with pytest.raises(ValueError, match="gap.csv: indices are not 0..1"):
        predict.read_class_names(str(tmp_path / "gap.csv"))


def test_scores_per_head_and_view_combination():
    meta = export.ExportMeta(
        num_classes=5,
        class_names=("take", "put", "cup", "pan", "lid"),
        class_splits=(2, 3),
        multi_label=False,
        modalities=("rgb",),
        input_shapes={"rgb": fx.RGB_SHAPE},
        video_fps=10.0,
        short_side=64,
        head_names=("verb", "noun"),
    )
    logits = np.array([[2.0, 0.0, 0.0, 3.0, 1.0], [0.0, 2.0, 0.0, 1.0, 3.0]])
    by_logits = predict.combine_views(
        logits, predict.Predictor(None, None, None, meta, None, 2, 1, combine="mean_logits")
    )
    np.testing.assert_allclose(by_logits[:2], [0.5, 0.5])  # mean logits (1, 1) → softmax
    by_probs = predict.combine_views(
        logits, predict.Predictor(None, None, None, meta, None, 2, 1, combine="mean_probs")
    )
    np.testing.assert_allclose(by_probs[:2].sum(), 1.0)
    np.testing.assert_allclose(by_probs[2:].sum(), 1.0)
    rows = predict.top_k(by_probs, meta, 2)
    assert [(r["head"], r["rank"], r["class"]) for r in rows] == [
        ("verb", 1, "take"),
        ("verb", 2, "put"),
        ("noun", 1, "pan"),
        ("noun", 2, "lid"),
    ]
    text = predict.format_text(
        {"file": "a.mp4", "modalities": ["rgb"], "num_views": 2, "score": "softmax", "top_k": rows}
    )
    assert text.splitlines()[1:4] == [
        "  verb:",
        f"    {rows[0]['score']:.4f}  take",
        f"    {rows[1]['score']:.4f}  put",
    ]

    multi = export.ExportMeta(
        num_classes=2,
        class_names=("a", "b"),
        class_splits=None,
        multi_label=True,
        modalities=("rgb",),
        input_shapes={"rgb": fx.RGB_SHAPE},
        video_fps=10.0,
        short_side=64,
    )
    scores = predict.combine_views(
        np.array([[0.0, 40.0], [0.0, -40.0]]),
        predict.Predictor(None, None, None, multi, None, 2, 1, combine="mean_logits"),
    )
    np.testing.assert_allclose(scores, [0.5, 0.5])  # sigmoid of the mean logit 0


def test_views_run_in_padded_calls_of_one_size():
    shapes = []

    def apply(params, inputs):
        shapes.append(inputs["rgb"].shape)
        return inputs["rgb"][:, :2] * params

    views = {"rgb": np.arange(14, dtype=np.float32).reshape(7, 2)}
    logits = predict.run_views(apply, 10.0, views, 3)
    np.testing.assert_array_equal(logits, views["rgb"] * 10.0)
    assert shapes == [(3, 2)] * 3
    shapes.clear()
    np.testing.assert_array_equal(predict.run_views(apply, 1.0, views, None), views["rgb"])
    assert shapes == [(7, 2)]


def test_branch_of_a_concat_model_uses_the_shared_blocks_after_fusion():
    config = fx.tiny_config(fusion="concat").model
    model = models.build_model(config, 6)
    params = fx.random_params(model)
    meta = export.export_meta(fx.tiny_config(fusion="concat"), fx.dataset_meta())
    _, branch = branches.branch_model(
        config, meta.num_classes, meta.input_shapes, params, ("spectrogram",)
    )
    flat, full = formats.flatten(branch), formats.flatten(params)
    # Layer 0 (before Lf = 1) is the spectrogram's own block, layer 1 the joint block.
    q = "MultiHeadDotProductAttention_0/query/kernel"
    assert (
        flat[f"Transformer/encoderblock_0_spectrogram/{q}"]
        is full[f"Transformer/encoderblock_0_spectrogram/{q}"]
    )
    assert (
        flat[f"Transformer/encoderblock_1_spectrogram/{q}"]
        is full[f"Transformer/encoderblock_1/{q}"]
    )
    assert flat["cls"] is full["clsspectrogram"]
    assert "bottleneck" not in flat and "embedding/kernel" not in flat


def test_argument_errors(run, tmp_path):
    clip = run["files"]["clip"]
    code, _, err = run_main([clip])
    assert code == 2 and "exactly one of --workdir, --export_dir, --checkpoint" in err
    code, _, err = run_main(["--workdir", str(tmp_path), clip])
    assert code == 2 and f"{tmp_path}/export" in err
    code, _, err = run_main(["--workdir", str(run["workdir"]), "--class_names", "x.csv", clip])
    assert code == 2 and "--class_names is only read with --checkpoint" in err
    code, _, err = run_main(["--scenic_checkpoint", str(tmp_path), clip])
    assert code == 2 and "--checkpoint needs --config" in err
    code, _, err = run_main(["--workdir", str(run["workdir"]), "--batch_size=-1", clip])
    assert code == 2 and "--batch_size=-1 must be >= 0" in err
