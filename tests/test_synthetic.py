"""The synthetic datasets: real on-disk formats, edge cases, determinism, a learnable signal."""

import ast
import csv
import hashlib
import json
import os
import re

import h5py
import numpy as np
import pytest

from mbt.data import media
from mbt.data import synthetic

NUM_CLIPS = 12
YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each dataset generated once (12 regular clips / segments, 6 classes, edge cases)."""
    root = tmp_path_factory.mktemp("synthetic")
    out = {}
    for dataset in synthetic.datasets():
        out[dataset] = synthetic.generate(
            dataset, str(root / dataset), NUM_CLIPS, seed=3, hdf5_audio=True
        )
    return out


def identify(summary, path, start_s, end_s):
    """(visual pattern, tone) of a decoded span: the nearest pattern colour to the mean
    chroma of 32-px frames, and the tone with the most spectral energy."""
    construction = summary["class_construction"]
    colours = np.array([p["colour_rgb"] for p in construction["patterns"]])
    colours = colours - colours.mean(axis=1, keepdims=True)
    frames = media.read_frames(path, start_s, end_s, fps=10.0, short_side=32)
    mean = frames.astype(np.float64).mean(axis=(0, 1, 2))
    pattern = int(np.argmax(colours @ (mean - mean.mean()) / np.linalg.norm(colours, axis=1)))
    audio = media.read_audio(path, start_s, end_s, sample_rate=16000)
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
    energy = [spectrum[np.abs(freqs - f) < 0.03 * f].max() for f in construction["tones_hz"]]
    return pattern, int(np.argmax(energy)), energy, float(np.median(spectrum))


def raw_lines(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")


# ---------------------------------------------------------------------------------------
# VGGSound


def test_vggsound_csv_format(generated):
    summary = generated["vggsound"]
    path = summary["files"]["csv"]
    lines = [line for line in raw_lines(path) if line]
    assert all(line.endswith(b"\r") for line in lines), "real vggsound.csv has CRLF endings"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == NUM_CLIPS + len(synthetic.EDGE_KINDS)
    assert all(len(row) == 4 for row in rows)  # no header, 4 fields even with commas
    assert any(b'"' in line and b", " in line for line in lines)
    names = summary["class_names"]
    assert names == sorted(names) and any("," in n for n in names)
    assert {row[3] for row in rows} == {"train", "test"}
    for ytid, start, label, _ in rows:
        assert YTID.match(ytid) and start.isdigit() and label in names
    assert any(row[0].startswith("-") for row in rows)


def test_vggsound_clips_nested_and_labelled(generated):
    summary = generated["vggsound"]
    root = summary["root"]
    on_disk = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".mp4"):
                on_disk[name] = os.path.relpath(os.path.join(folder, name), root)
    with open(summary["files"]["csv"], newline="") as f:
        rows = list(csv.reader(f))
    missing = [r for r in rows if f"{r[0]}_{int(r[1]):06d}.mp4" not in on_disk]
    assert [f"{r[0]}_{int(r[1]):06d}" for r in missing] == summary["edge_cases"]["missing_file"]
    assert all(p.count(os.sep) >= 3 for p in on_disk.values())  # nested archive folders
    by_id = {c["id"]: c for c in summary["clips"]}
    for ytid, start, label, split in rows:
        clip = by_id[f"{ytid}_{int(start):06d}"]
        assert clip["labels"] == [summary["class_names"].index(label)]
        assert clip["split"] == split and 0 <= clip["labels"][0] < summary["num_classes"]


# ---------------------------------------------------------------------------------------
# AudioSet


def test_audioset_class_labels_indices(generated):
    summary = generated["audioset"]
    path = summary["files"]["class_labels_indices"]
    lines = [line.decode() for line in raw_lines(path) if line]
    assert lines[0] == "index,mid,display_name"
    assert all(re.match(r'^\d+,/[mgt]/\w+,"[^"]+"$', line) for line in lines[1:])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 527 == len({r["mid"] for r in rows})
    assert [int(r["index"]) for r in rows] == list(range(527))
    assert sum("," in r["display_name"] for r in rows) > 10
    assert [r["display_name"] for r in rows[:6]] == summary["class_names"]
    assert [r["mid"] for r in rows[:6]] == summary["mids"]
    with open(summary["files"]["ontology"]) as f:
        ontology = json.load(f)
    assert len(ontology) == 527
    assert set(ontology[0]) == {
        "id",
        "name",
        "description",
        "citation_uri",
        "positive_examples",
        "child_ids",
        "restrictions",
    }


def read_segments(path):
    """How the real segment CSVs are read: skip '#' lines, ', ' separators, quoted mids."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(
        csv.reader((line for line in lines if not line.startswith("#")), skipinitialspace=True)
    )
    return comments, rows


def test_audioset_segment_csvs(generated):
    summary = generated["audioset"]
    mid_to_index = {m: i for i, m in enumerate(summary["mids"])}
    all_rows = []
    for split in synthetic.AUDIOSET_SPLITS:
        comments, rows = read_segments(summary["files"][split])
        assert comments[0] == "# Segments csv created Sun Mar  5 10:54:31 2017"
        assert comments[1].startswith(f"# num_ytids={len(rows)}, num_segs={len(rows)}, ")
        assert comments[2] == "# YTID, start_seconds, end_seconds, positive_labels"
        for line in raw_lines(summary["files"][split])[3:]:
            if line:
                assert re.match(rb'^[\w-]{11}, \d+\.\d{3}, \d+\.\d{3}, "[^"]+"$', line), line
        for ytid, start, end, mids in rows:
            assert YTID.match(ytid) and float(end) > float(start)
            labels = [mid_to_index[m] for m in mids.split(",")]  # only the used classes
            assert 1 <= len(labels) <= 2
            all_rows.append((ytid, float(start), float(end), labels))
    assert len(all_rows) == NUM_CLIPS + len(synthetic.EDGE_KINDS)
    assert any(len(r[3]) == 2 for r in all_rows), "multi-label rows expected"
    assert any(r[2] - r[1] < summary["clip_seconds"] for r in all_rows), "short segments"
    by_id = {c["ytid"]: c for c in summary["clips"]}
    for ytid, start, end, labels in all_rows:
        clip = by_id[ytid]
        assert sorted(clip["labels"]) == sorted(labels)
        name = f"{ytid}_{int(round(start * 1000))}_{int(round(end * 1000))}.mp4"
        assert clip["path"] == os.path.join(clip["split"], name)
        exists = os.path.exists(os.path.join(summary["root"], clip["path"]))
        assert exists == (clip["edge_case"] != "missing_file")


def test_audioset_other_name_format(tmp_path):
    summary = synthetic.generate(
        "audioset",
        str(tmp_path),
        2,
        edge_cases=False,
        clip_name_format="{ytid}_{start:06d}_{end:06d}.mp4",
    )
    for clip in summary["clips"]:
        name = f"{clip['ytid']}_{int(clip['start_s']):06d}_{int(clip['end_s']):06d}.mp4"
        assert os.path.isfile(os.path.join(summary["root"], clip["split"], name))
    assert summary["edge_cases"] == {}
    with pytest.raises(ValueError, match="clip_name_format"):
        synthetic.generate("audioset", str(tmp_path / "bad"), 1, clip_name_format="{vid}.mp4")


# ---------------------------------------------------------------------------------------
# EPIC-Kitchens-100

HMS = re.compile(r"^\d\d:\d\d:\d\d\.\d\d$")


def test_epic_annotation_csvs(generated):
    summary = generated["epic_kitchens"]
    files = summary["files"]
    rows = []
    for split in ("train", "validation"):
        with open(files[split], newline="") as f:
            assert f.readline().rstrip("\n") == ",".join(synthetic.EPIC_HEADER)
            f.seek(0)
            rows += [dict(r, split=split) for r in csv.DictReader(f)]
    assert len(rows) == summary["counts"]["segments"] >= NUM_CLIPS
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert any(r["narration_timestamp"] == "" for r in rows)
    assert any('"[' in line.decode() for line in raw_lines(files["train"]))
    for r in rows:
        assert HMS.match(r["start_timestamp"]) and HMS.match(r["stop_timestamp"])
        assert r["narration_timestamp"] == "" or re.match(
            r"^\d\d:\d\d:\d\d\.\d{3}$", r["narration_timestamp"]
        )
        nouns, noun_classes = (
            ast.literal_eval(r["all_nouns"]),
            ast.literal_eval(r["all_noun_classes"]),
        )
        assert nouns[0] == r["noun"] and noun_classes[0] == int(r["noun_class"])
        assert len(nouns) == len(noun_classes)
        assert 0 <= int(r["verb_class"]) < 97 and 0 <= int(r["noun_class"]) < 300
        # Frame columns count at 60 fps (EPIC-55 ids) or 50 fps (extension ids >= 101).
        nominal = 50 if int(r["video_id"].split("_")[1]) >= 101 else 60
        h, m, s = r["start_timestamp"].split(":")
        start_s = int(h) * 3600 + int(m) * 60 + float(s)
        assert int(r["start_frame"]) == max(1, round(start_s * nominal))
    for name, count in (("verb_classes", 97), ("noun_classes", 300)):
        with open(files[name], newline="") as f:
            classes = list(csv.DictReader(f))
        assert list(classes[0]) == ["id", "key", "instances", "category"]
        assert [int(c["id"]) for c in classes] == list(range(count))
        assert all(isinstance(ast.literal_eval(c["instances"]), list) for c in classes)
    with open(files["video_info"], newline="") as f:
        info = {r["video_id"]: r for r in csv.DictReader(f)}
    assert set(info) == {v["video_id"] for v in summary["videos"]}
    assert {r["resolution"] for r in info.values()} == {"114x64"}


def test_epic_videos_mixed_rates_and_codecs(generated):
    summary = generated["epic_kitchens"]
    seen = set()
    for video in summary["videos"]:
        if video["edge_case"] in ("missing_file", "undecodable"):
            continue
        assert re.match(r"^P\d\d/videos/P\d\d_\d+\.MP4$", video["path"].replace(os.sep, "/"))
        info = media.probe(os.path.join(summary["root"], video["path"]))
        seen.add((info.video_codec, round(info.fps, 2)))
        assert info.duration_s == pytest.approx(video["duration_s"], abs=0.05)
        assert info.has_audio == video["has_audio"]
        assert info.audio_sample_rate in (None, 48000)
    assert {("h264", 59.94), ("hevc", 50.0), ("h264", 29.97)} <= seen


def test_epic_hdf5_audio_matches_the_mp4(generated):
    summary = generated["epic_kitchens"]
    with h5py.File(summary["files"]["audio_hdf5"], "r") as f:
        with_audio = [v for v in summary["videos"] if v["has_audio"] and not v["edge_case"]]
        assert sorted(f) == sorted(v["video_id"] for v in with_audio)
        video = with_audio[0]
        track = f[video["video_id"]][:]
    assert track.dtype == np.float32 and track.ndim == 1
    decoded = media.read_audio(
        os.path.join(summary["root"], video["path"]), 0.0, len(track) / 24000, sample_rate=24000
    )
    assert np.corrcoef(decoded, track)[0, 1] > 0.9


# ---------------------------------------------------------------------------------------
# Edge cases, learnability, determinism, CLI


@pytest.mark.parametrize("dataset", synthetic.datasets())
def test_edge_cases_present_and_behave(generated, dataset):
    summary = generated[dataset]
    assert set(synthetic.EDGE_KINDS) <= set(summary["edge_cases"])
    if dataset == "epic_kitchens":
        paths = {v["video_id"]: v["path"] for v in summary["videos"]}
        seconds = {v["video_id"]: v["duration_s"] for v in summary["videos"]}
        segment = {s["narration_id"]: s for s in summary["segments"]}
        short = segment[summary["edge_cases"]["clip_shorter_than_segment"][0]]
        short_path, short_end = paths[short["video_id"]], short["stop_s"]
        assert short["start_s"] < seconds[short["video_id"]] < short_end
    else:
        paths = {c["id"]: c["path"] for c in summary["clips"]}
        short = paths[summary["edge_cases"]["clip_shorter_than_segment"][0]]
        clip = next(c for c in summary["clips"] if c["path"] == short)
        short_path, short_end = short, clip["end_s"] - clip["start_s"]
    root = summary["root"]
    (missing,) = summary["edge_cases"]["missing_file"]
    assert not os.path.exists(os.path.join(root, paths[missing]))
    (silent,) = summary["edge_cases"]["no_audio"]
    with pytest.raises(media.NoAudioStreamError):
        media.read_audio(os.path.join(root, paths[silent]), 0.0, 1.0)
    assert media.read_frames(os.path.join(root, paths[silent]), 0.0, 1.0).shape[0] > 0
    (garbage,) = summary["edge_cases"]["undecodable"]
    with pytest.raises(media.MediaError, match=re.escape(os.path.basename(paths[garbage]))):
        media.probe(os.path.join(root, paths[garbage]))
    assert media.probe(os.path.join(root, short_path)).duration_s < short_end - 0.2


def test_youtube_clips_are_learnable(generated):
    """Mean colour names v(c) and the dominant tone names a(c) for every decodable clip;
    two-label AudioSet clips carry both classes' tones."""
    for dataset in ("vggsound", "audioset"):
        summary = generated[dataset]
        classes = summary["class_construction"]["classes"]
        checked = 0
        for clip in summary["clips"]:
            if clip["edge_case"] in ("missing_file", "undecodable", "no_audio"):
                continue
            path = os.path.join(summary["root"], clip["path"])
            pattern, tone, energy, floor = identify(summary, path, 0.0, clip["file_seconds"])
            wanted = [classes[c] for c in clip["labels"]]
            if len(wanted) == 1:
                assert (pattern, tone) == (wanted[0]["visual_pattern"], wanted[0]["tone"]), clip
            else:
                assert pattern in {w["visual_pattern"] for w in wanted}
                assert all(energy[w["tone"]] > 20 * floor for w in wanted)
            checked += 1
        assert checked >= NUM_CLIPS - 1


def test_epic_segments_are_learnable(generated):
    summary = generated["epic_kitchens"]
    videos = {v["video_id"]: v for v in summary["videos"]}
    checked = 0
    for segment in summary["segments"]:
        video = videos[segment["video_id"]]
        if video["edge_case"] or segment["edge_case"]:
            continue
        path = os.path.join(summary["root"], video["path"])
        pattern, tone, _, _ = identify(summary, path, segment["start_s"], segment["stop_s"])
        assert (pattern, tone) == (segment["verb_class"], segment["noun_class"]), segment
        checked += 1
    assert checked == NUM_CLIPS


def test_class_grid_separates_modalities():
    grid = synthetic.ClassGrid(6)
    pairs = {(grid.pattern(c), grid.tone(c)) for c in range(6)}
    assert len(pairs) == 6  # fusion can tell all classes apart ...
    assert grid.num_patterns < 6 and grid.num_tones < 6  # ... neither modality alone can
    hz = [grid.tone_hz(q) for q in range(grid.num_tones)]
    assert hz[0] >= 300 and hz[-1] <= 3000
    assert len({(grid.pattern(c), grid.tone(c)) for c in range(7)}) == 7


def tree_digest(root):
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name != synthetic.SUMMARY_FILE:
                with open(os.path.join(folder, name), "rb") as f:
                    digest[os.path.relpath(os.path.join(folder, name), root)] = hashlib.md5(
                        f.read()
                    ).hexdigest()
    return digest


def test_deterministic_given_seed(tmp_path):
    kwargs = dict(num_classes=3)
    first = synthetic.generate("vggsound", str(tmp_path / "a"), 3, seed=7, **kwargs)
    again = synthetic.generate("vggsound", str(tmp_path / "b"), 3, seed=7, **kwargs)
    other = synthetic.generate("vggsound", str(tmp_path / "c"), 3, seed=8, **kwargs)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert first["clips"] == again["clips"]
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    assert first["clips"] != other["clips"]


def test_cli_prints_what_it_wrote(tmp_path, capsys):
    synthetic.main(
        [
            "--dataset=vggsound",
            f"--out={tmp_path}",
            "--num_clips=2",
            "--no_edge_cases",
            "--num_classes=2",
        ]
    )
    printed = capsys.readouterr().out
    assert "vggsound.csv" in printed and synthetic.SUMMARY_FILE in printed
    with open(tmp_path / synthetic.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["counts"]["rows"] == 2 and summary["edge_cases"] == {}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'kinetics' is not a registered dataset; known:"):
        synthetic.generate("kinetics", "/tmp/unused", 1)
    with pytest.raises(ValueError, match="num_classes=600"):
        synthetic.generate("audioset", "/tmp/unused", 1, num_classes=600)
    with pytest.raises(ValueError, match="frame_size"):
        synthetic.generate("vggsound", "/tmp/unused", 1, frame_size=15)
