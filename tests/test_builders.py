"""TFDS builders (AudioSet, VGGSound, EPIC-Kitchens-100) on synthetic copies in the real layouts.

Each dataset is generated once per module by `mbt.data.synthetic` (tiny clips) and built
with the TFDS API; the tests then read the prepared splits back.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mbt.data import sources
from mbt.data import synthetic
from mbt.data.builders import audioset
from mbt.data.builders import base
from mbt.data.builders import common
from mbt.data.builders import epic_kitchens
from mbt.data.builders import vggsound
from mbt.data.builders import vggsound_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FPS = 10.0
SHORT_TOLERANCE_S = base.MediaConfig.short_tolerance_s
EDGE_TO_KIND = {"missing_file": "missing_clip", "undecodable": "undecodable"}


def _build(builder_cls, config, manual_dir, data_dir):
    builder = builder_cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _read(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def _report(builder, split):
    with open(os.path.join(builder.data_dir, f"build_report_{split}.json")) as f:
        return json.load(f)


def _reported_names(builder):
    """kind -> set of names over all splits' reports (counts checked to equal the lists)."""
    names = {}
    for split in builder.info.splits.keys():
        report = _report(builder, split)
        for kind, count in report["counts"].items():
            listed = [entry["name"] for entry in report["first"].get(kind, [])]
            assert len(listed) == count, (split, kind)
            names.setdefault(kind, set()).update(listed)
    return {kind: found for kind, found in names.items() if found}


def _expected_youtube_kinds(summary, name_of):
    """kind -> names the builder must report, from what the generator wrote."""
    expected = {}
    for clip in summary["clips"]:
        edge, name = clip["edge_case"], name_of(clip)
        if edge in EDGE_TO_KIND:
            expected.setdefault(EDGE_TO_KIND[edge], set()).add(name)
            continue
        if not clip["has_audio"]:
            expected.setdefault("no_audio", set()).add(name)
        if clip["file_seconds"] < clip["end_s"] - clip["start_s"] - SHORT_TOLERANCE_S:
            expected.setdefault("short_clip", set()).add(name)
    return expected


def _check_media(example, fps=TINY_FPS, short_side=64):
    """Frame count, frame size and audio length agree with the stored segment."""
    duration = float(example["segment_end"]) - float(example["segment_start"])
    assert example["rgb"].dtype == np.uint8
    assert example["rgb"].shape[0] == round(duration * fps)
    assert min(example["rgb"].shape[1:3]) == short_side and example["rgb"].shape[3] == 3
    assert example["audio"].dtype == np.float32
    assert example["audio"].shape == (round(duration * 16000),)
    assert np.abs(example["audio"]).max() <= 1.0
    if example["has_audio"]:
        assert np.abs(example["audio"]).max() > 0.01
    else:
        assert not example["audio"].any()


# ---------------------------------------------------------------------------------------
# VGGSound


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggsound")
    summary = synthetic.generate("vggsound", str(root / "manual"), 8)
    builder = _build(vggsound.Vggsound, "tiny", root / "manual", root / "tfds")
    return builder, summary, root


def test_vggsound_examples_and_official_labels(vgg):
    builder, summary, _ = vgg
    # 6 label names in the CSV, still the 309 official classes (index = official position).
    official = list(vggsound_spec.official_class_names())
    assert builder.info.features["label"].names == official
    with open(summary["files"]["csv"], newline="") as f:
        assert len({row[2] for row in csv.reader(f)}) == 6
    clips = {clip["id"]: clip for clip in summary["clips"]}
    seen = 0
    for split in ("train", "test"):
        for example in _read(builder, split):
            clip = clips[example["id"].decode()]
            assert clip["split"] == split
            assert example["label"] == official.index(clip["label_names"][0])
            assert example["video_path"].decode() == clip["path"]
            assert example["segment_start"] == 0.0
            if clip["file_seconds"] >= 2.0:
                assert example["segment_end"] == 2.0
                assert example["rgb"].shape[0] == 20 and example["audio"].shape == (32000,)
            else:  # cut to the end of the clip
                assert example["segment_end"] == pytest.approx(clip["file_seconds"], abs=0.05)
            assert bool(example["has_audio"]) == clip["has_audio"]
            _check_media(example)
            seen += 1
    regular = [c for c in clips.values() if c["edge_case"] not in EDGE_TO_KIND]
    assert seen == len(regular)


def test_vggsound_report_matches_edge_cases(vgg):
    builder, summary, _ = vgg
    expected = _expected_youtube_kinds(summary, lambda clip: clip["id"])
    assert _reported_names(builder) == expected
    assert expected["missing_clip"] and expected["undecodable"] and expected["no_audio"]
    report = _report(builder, "train")
    assert report["complete"] and report["split"] == "train"
    assert report["csv_rows"] == report["examples_written"] + report["examples_skipped"]
    assert report["csv_rows"] == sum(c["split"] == "train" for c in summary["clips"])


def test_vggsound_prepared_dataset_reloads_class_names(vgg):
    builder, _, root = vgg
    reloaded = tfds.builder("vggsound/tiny", data_dir=str(root / "tfds"))
    assert reloaded.info.features["label"].names == builder.info.features["label"].names
    assert reloaded.info.splits["train"].num_examples == len(_read(builder, "train"))


def _run_cli(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _check_cli_build(builder, data_dir, stdout):
    assert "[vggsound/tiny train]" in stdout  # the per-split summary is printed
    built = os.path.join(data_dir, "vggsound", "tiny", "1.0.0")
    for split in ("train", "test"):
        with open(os.path.join(built, f"build_report_{split}.json")) as f:
            assert json.load(f)["counts"] == _report(builder, split)["counts"]


def test_module_cli_builds_a_dataset(vgg, tmp_path):
    builder, _, root = vgg
    result = _run_cli(
        [
            sys.executable,
            "-m",
            "mbt.data.builders",
            "--dataset=vggsound",
            "--config=tiny",
            f"--manual_dir={root / 'manual'}",
            f"--data_dir={tmp_path}",
        ],
        tmp_path,
    )
    _check_cli_build(builder, tmp_path, result.stdout)
    assert "vggsound/tiny prepared in" in result.stdout


def test_tfds_build_cli(vgg, tmp_path):
    # TFDS's CLI imports apache_beam and mlcroissant at start-up: setup.py's `tfds_cli` extra
    # (part of `test`) installs them.
    builder, _, root = vgg
    result = _run_cli(
        [
            sys.executable,
            "-m",
            "tensorflow_datasets.scripts.cli.main",
            "build",
            os.path.join(REPO, "mbt", "data", "builders", "vggsound.py"),
            "--config=tiny",
            f"--manual_dir={root / 'manual'}",
            f"--data_dir={tmp_path}",
        ],
        tmp_path,
    )
    _check_cli_build(builder, tmp_path, result.stdout)


def test_vggsound_csv_header_crlf_and_quotes(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_bytes(
        b"youtube_id,start_seconds,label,split\r\n"
        b"---g-f_I2yQ,1,people marching,test\r\n"
        b'--9O4XZOge4,30,"female speech, woman speaking",train\r\n'
    )
    rows = vggsound.read_rows(str(path))
    assert [(r.ytid, r.start_s, r.label, r.split, r.line) for r in rows] == [
        ("---g-f_I2yQ", 1, "people marching", "test", 2),
        ("--9O4XZOge4", 30, "female speech, woman speaking", "train", 3),
    ]
    assert vggsound.class_names(rows, "csv") == [
        "female speech, woman speaking",
        "people marching",
    ]
    assert len(vggsound.class_names(rows)) == 309  # both are official names


def test_malformed_csv_line_names_file_and_line(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "vggsound.csv").write_text("aaaaaaaaaaa,1,dog,train\nbbbbbbbbbbb,2,cat\n")
    with pytest.raises(common.MalformedCsvError, match=r"vggsound\.csv, line 2: expected 4"):
        _build(vggsound.Vggsound, "tiny", manual, tmp_path / "tfds")
    (manual / "vggsound.csv").write_text("aaaaaaaaaaa,1,dog,train\nbbbbbbbbbbb,x,cat,test\n")
    with pytest.raises(common.MalformedCsvError, match=r"line 2: column 'start_seconds'"):
        vggsound.read_rows(str(manual / "vggsound.csv"))
    (manual / "vggsound.csv").write_text("aaaaaaaaaaa,1,dog,train\nbbbbbbbbbbb,2,cat,val\n")
    with pytest.raises(common.MalformedCsvError, match="line 2: split 'val'"):
        vggsound.read_rows(str(manual / "vggsound.csv"))


# ---------------------------------------------------------------------------------------
# AudioSet


@pytest.fixture(scope="module")
def aset(tmp_path_factory):
    root = tmp_path_factory.mktemp("audioset")
    manual = root / "manual"
    # 3 classes and 10 clips put rows into all three segment lists.
    summary = synthetic.generate("audioset", str(manual), 10, num_classes=3)
    subset = [
        c["ytid"]
        for c in summary["clips"]
        if c["split"] in ("balanced_train", "unbalanced_train") and c["edge_case"] is None
    ]
    subset = subset[::2] + ["notInAnyCsv"]
    (manual / "subset_ids.txt").write_text("# AS-500K style id list\n" + "\n".join(subset) + "\n")
    builder = _build(audioset.Audioset, "tiny", manual, root / "tfds")
    return builder, summary, subset[:-1]


def _audioset_name(clip):
    return f"{clip['ytid']}_{int(round(clip['start_s'] * 1000))}"


def test_audioset_labels_follow_the_csv(aset):
    builder, summary, _ = aset
    with open(summary["files"]["class_labels_indices"], newline="") as f:
        class_rows = list(csv.reader(f))[1:]
    mid_to_index = {mid: int(index) for index, mid, _ in class_rows}
    label = builder.info.features["label"].feature
    assert label.num_classes == 527
    assert label.names == [name for _, _, name in class_rows]
    # A known row of the segment CSV, parsed here independently of the builder.
    with open(summary["files"]["balanced_train"]) as f:
        line = [line for line in f if not line.startswith("#")][0]
    ytid, _, _, mids = next(csv.reader([line], skipinitialspace=True))
    examples = {e["id"].decode(): e for e in _read(builder, "balanced_train")}
    assert sorted(examples[ytid]["label"]) == sorted(mid_to_index[m] for m in mids.split(","))
    clips = {c["ytid"]: c for c in summary["clips"]}
    for ytid, example in examples.items():
        assert list(example["label"]) == clips[ytid]["labels"]


def test_audioset_splits_short_segments_and_report(aset):
    builder, summary, subset = aset
    assert set(builder.info.splits.keys()) == {
        "balanced_train",
        "eval",
        "unbalanced_train",
        "subset",
    }
    clips = {c["ytid"]: c for c in summary["clips"]}
    short_segments = 0
    for split in ("balanced_train", "eval", "unbalanced_train"):
        for example in _read(builder, split):
            clip = clips[example["id"].decode()]
            assert clip["split"] == split
            _check_media(example)
            if clip["edge_case"] == "short_segment":  # a 6-9 s style row: its own length
                short_segments += 1
                assert example["segment_end"] == pytest.approx(clip["end_s"] - clip["start_s"])
    assert short_segments == len(summary["edge_cases"]["short_segment"])
    assert _reported_names(builder) == _expected_youtube_kinds(summary, _audioset_name)
    assert sorted(e["id"].decode() for e in _read(builder, "subset")) == sorted(subset)


def test_audioset_audio_only_wav_clips(tmp_path):
    manual = tmp_path / "manual"
    synthetic.generate(
        "audioset", str(manual), 3, num_classes=3, edge_cases=False, clip_name_format="Y{ytid}.wav"
    )
    builder = _build(audioset.Audioset, "tiny", manual, tmp_path / "tfds")
    examples = _read(builder, "balanced_train")
    assert len(examples) == 3
    for example in examples:
        assert example["rgb"].shape[0] == 0  # no video stream: zero frames
        assert example["has_audio"] and example["audio"].shape == (32000,)
    assert _report(builder, "balanced_train")["counts"]["no_video"] == 3
    # The pipeline's source leaves frames encoded: a frameless video is a [0] string tensor.
    source = sources.tfds_source("audioset", "tiny", str(tmp_path / "tfds"))
    read = list(source.read("balanced_train", 0, 3).as_numpy_iterator())
    assert [(ex["rgb"].shape, ex["rgb"].dtype) for ex in read] == [((0,), object)] * 3


def test_audioset_csv_parsing(tmp_path):
    classes = tmp_path / "class_labels_indices.csv"
    classes.write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n'
        '1,/t/dd00088,"Gush"\n2,/m/0bt9lr,"Dog, domestic"\n'
    )
    names, mid_to_index = audioset.read_class_names(str(classes))
    assert names == ["Speech", "Gush", "Dog, domestic"]
    segments = tmp_path / "eval_segments.csv"
    segments.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '-0RWZT-miFs, 420.000, 426.000, "/m/0bt9lr"\n'
    )
    rows = audioset.read_segments(str(segments), mid_to_index)
    assert [(r.ytid, r.start_s, r.end_s, r.label_indices, r.line) for r in rows] == [
        ("--PJHxphWEs", 30.0, 40.0, (0, 1), 4),
        ("-0RWZT-miFs", 420.0, 426.0, (2,), 5),
    ]
    assert audioset.format_candidates(audioset.DEFAULT_FILE_PATTERNS, rows[1]) == [
        "-0RWZT-miFs_420000_426000.mp4",
        "-0RWZT-miFs_000420_000426.mp4",
        "Y-0RWZT-miFs.mp4",
        "Y-0RWZT-miFs.wav",
        "-0RWZT-miFs.mp4",
    ]
    with open(segments, "a") as f:
        f.write('abcdefghijk, 1.000, 2.000, "/m/unknown"\n')
    with pytest.raises(common.MalformedCsvError, match=r"eval_segments\.csv, line 6: label MIDs"):
        audioset.read_segments(str(segments), mid_to_index)
    with pytest.raises(ValueError, match="placeholders"):
        audioset.format_candidates(("{video}.mp4",), rows[0])


# ---------------------------------------------------------------------------------------
# EPIC-Kitchens-100


@pytest.fixture(scope="module")
def epic(tmp_path_factory):
    root = tmp_path_factory.mktemp("epic")
    summary = synthetic.generate("epic_kitchens", str(root / "manual"), 8, hdf5_audio=True)
    mp4 = _build(epic_kitchens.EpicKitchens, "tiny", root / "manual", root / "tfds")
    hdf5 = _build(epic_kitchens.EpicKitchens, "tiny_hdf5_audio", root / "manual", root / "tfds")
    return mp4, hdf5, summary


def test_epic_examples_verb_noun_and_timestamps(epic):
    builder, _, summary = epic
    with open(summary["files"]["verb_classes"], newline="") as f:
        verb_keys = [row["key"] for row in csv.DictReader(f)]
    assert builder.info.features["verb_label"].names == verb_keys
    assert builder.info.features["verb_label"].num_classes == 97
    assert builder.info.features["noun_label"].num_classes == 300
    segments = {s["narration_id"]: s for s in summary["segments"]}
    seen = 0
    for split in ("train", "validation"):
        for example in _read(builder, split):
            segment = segments[example["id"].decode()]
            assert segment["split"] == split
            assert example["verb_label"] == segment["verb_class"]
            assert example["noun_label"] == segment["noun_class"]
            assert example["segment_start"] == pytest.approx(segment["start_s"], abs=1e-5)
            if segment["edge_case"] != "clip_shorter_than_segment":
                assert example["segment_end"] == pytest.approx(segment["stop_s"], abs=1e-5)
            assert example["video_path"].decode() == os.path.join(
                segment["participant_id"], "videos", f"{segment['video_id']}.MP4"
            )
            _check_media(example)
            seen += 1
    assert seen == sum(s["edge_case"] not in EDGE_TO_KIND for s in segments.values())


def test_epic_report_matches_edge_cases(epic):
    mp4, hdf5, summary = epic
    expected = {}
    for segment in summary["segments"]:
        kind = (
            {
                "missing_file": "missing_clip",
                "undecodable": "undecodable",
                "no_audio": "no_audio",
                "clip_shorter_than_segment": "short_clip",
            }[segment["edge_case"]]
            if segment["edge_case"]
            else None
        )
        if kind:
            expected.setdefault(kind, set()).add(segment["narration_id"])
    assert set(expected) == {"missing_clip", "undecodable", "no_audio", "short_clip"}
    assert _reported_names(mp4) == expected
    # The HDF5 copy has no waveform for the video without audio: same kinds.
    assert _reported_names(hdf5) == expected


def test_epic_hdf5_audio_matches_mp4_audio(epic):
    mp4, hdf5, _ = epic
    from_mp4 = {e["id"]: e for e in _read(mp4, "train")}
    compared = 0
    for example in _read(hdf5, "train"):
        other = from_mp4[example["id"]]
        assert example["audio"].shape == other["audio"].shape
        assert bool(example["has_audio"]) == bool(other["has_audio"])
        if example["has_audio"]:
            # Same tones rendered at 24 kHz (HDF5) and 48 kHz (AAC); only the noise differs.
            correlation = np.corrcoef(example["audio"], other["audio"])[0, 1]
            assert correlation > 0.9, (example["id"], correlation)
            compared += 1
    assert compared >= 4


def test_epic_annotation_errors(tmp_path):
    header = ",".join(epic_kitchens.ANNOTATION_COLUMNS)
    good = (
        "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:01.89,1,113,take plate,take,0,"
        "plate,2,['plate'],[2]"
    )
    path = tmp_path / "EPIC_100_train.csv"
    path.write_text("\n".join([header, good, good.replace("00:00:01.89", "1.89")]) + "\n")
    with pytest.raises(
        common.MalformedCsvError, match=r"EPIC_100_train\.csv, line 3: column 'stop_timestamp'"
    ):
        epic_kitchens.read_annotations(str(path), 97, 300)
    path.write_text("\n".join([header, good.replace(",[2]", ",[2")]) + "\n")
    with pytest.raises(common.MalformedCsvError, match="line 2: column 'all_noun_classes'"):
        epic_kitchens.read_annotations(str(path), 97, 300)
    path.write_text("\n".join([header, good]) + "\n")
    (narration,) = epic_kitchens.read_annotations(str(path), 97, 300)
    assert (narration.start_s, narration.stop_s, narration.verb_class, narration.noun_class) == (
        0.0,
        1.89,
        0,
        2,
    )
    with pytest.raises(common.MalformedCsvError, match="noun_class 2 not in"):
        epic_kitchens.read_annotations(str(path), 97, 2)
    assert epic_kitchens.parse_timestamp("01:02:03.25") == pytest.approx(3723.25)


# ---------------------------------------------------------------------------------------
# Shared helpers


def test_resample_24k_to_16k_keeps_a_tone():
    t_in = np.arange(24000) / 24000
    t_out = np.arange(16000) / 16000
    tone = lambda t: 0.5 * np.sin(2 * np.pi * 1000 * t)  # noqa: E731
    resampled = common.resample(tone(t_in), 24000, 16000)
    assert resampled.shape == (16000,) and resampled.dtype == np.float32
    np.testing.assert_allclose(resampled[200:-200], tone(t_out)[200:-200], atol=2e-3)
    # 10 kHz is above the 8 kHz Nyquist of the output: filtered out, not aliased to 6 kHz.
    aliased = common.resample(np.sin(2 * np.pi * 10000 * t_in), 24000, 16000)
    assert np.abs(aliased[200:-200]).max() < 0.02


def test_report_written_when_generation_stops_early(tmp_path):
    report = common.BuildReport("demo", "tiny", "1.0.0", "train")
    report.add("no_audio", "clip0", "no audio stream")
    report.add("missing_clip", "clip1")
    examples = common.report_examples(iter([("a", {}), ("b", {})]), report, lambda: str(tmp_path))
    next(examples)
    examples.close()
    with open(tmp_path / "build_report_train.json") as f:
        written = json.load(f)
    assert not written["complete"]
    assert written["counts"]["no_audio"] == 1 and written["skipped"] == {
        "missing_clip": 1,
        "undecodable": 0,
        "empty_segment": 0,
    }
    assert written["first"]["no_audio"] == [{"name": "clip0", "detail": "no audio stream"}]


def test_index_files_walks_nested_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x_000001.mp4").write_bytes(b"")
    (tmp_path / "y.MP4").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert common.index_files(str(tmp_path), (".mp4",)) == {
        "x_000001.mp4": os.path.join("a", "b", "x_000001.mp4"),
        "y.MP4": "y.MP4",
    }
