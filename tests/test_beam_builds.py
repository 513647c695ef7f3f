"""Beam builds of the media datasets equal their plain builds, bad-input report included.

VGGSound is built end to end with the command the docs give (`tfds build ...
--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,
direct_running_mode=multi_processing`: two worker processes), AudioSet and EPIC-Kitchens
(HDF5 audio, through `python -m mbt.data.builders`) in this process; every builder's split
generators are checked to take the Beam path.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mbt.data import synthetic
from mbt.data.builders import __main__ as builders_main
from mbt.data.builders import audioset
from mbt.data.builders import base
from mbt.data.builders import epic_kitchens
from mbt.data.builders import sounding_objects
from mbt.data.builders import vggsound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESSING = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
MULTI_THREADING = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_threading"
# Generator edge case -> the report kind it must land in.
EDGE_TO_KIND = {
    "missing_file": "missing_clip",
    "undecodable": "undecodable",
    "no_audio": "no_audio",
    "clip_shorter_than_segment": "short_clip",
}


# Apache Beam (with pandas and pyarrow, ~130 MB) is imported by the tests that use it, not at
# collection, when every pytest worker imports every test module.


def _beam_build():
    from mbt.data.builders import beam_build

    return beam_build


def _beam_options(options: str):
    """What `tfds build --beam_pipeline_options=OPTIONS` makes of its value."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(flags=[f"--{option}" for option in options.split(",") if option])


def _build(builder_cls, config, manual_dir, data_dir, beam_options=None):
    builder = builder_cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir), beam_options=beam_options
        )
    )
    return builder


def _reports(builder) -> dict[str, dict]:
    reports = {}
    for split in builder.info.splits.keys():
        with open(os.path.join(builder.data_dir, f"build_report_{split}.json")) as f:
            reports[split] = json.load(f)
    return reports


def _assert_same_examples(plain, beam):
    """Same splits, same examples in the same order, every feature equal."""
    assert sorted(beam.info.splits.keys()) == sorted(plain.info.splits.keys())
    for split in plain.info.splits.keys():
        expected = list(tfds.as_numpy(plain.as_dataset(split=split, shuffle_files=False)))
        found = list(tfds.as_numpy(beam.as_dataset(split=split, shuffle_files=False)))
        assert [e["id"] for e in found] == [e["id"] for e in expected], split
        for want, got in zip(expected, found):
            assert want.keys() == got.keys()
            for feature in want:
                np.testing.assert_array_equal(got[feature], want[feature], err_msg=feature)


# ---------------------------------------------------------------------------------------
# VGGSound through the `tfds build` command, two worker processes


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggsound_beam")
    summary = synthetic.generate("vggsound", str(root / "manual"), 6)
    plain = _build(vggsound.Vggsound, "tiny", root / "manual", root / "plain")
    return plain, summary, root


def test_tfds_build_with_beam_multi_processing_equals_plain_build(vgg):
    plain, summary, root = vgg
    command = [
        sys.executable,
        "-m",
        "tensorflow_datasets.scripts.cli.main",
        "build",
        os.path.join(REPO, "mbt", "data", "builders", "vggsound.py"),
        "--config=tiny",
        f"--manual_dir={root / 'manual'}",
        f"--data_dir={root / 'beam'}",
        f"--beam_pipeline_options={MULTI_PROCESSING}",
    ]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        command, cwd=str(root), env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # The builder was loaded from its file as `builders.vggsound`: the workers got it by value.
    assert "Module builders.vggsound is not importable by name" in output
    assert "Beam build of ['train', 'test']: the Beam counters agree with the reports." in output
    assert "[vggsound/tiny train]" in result.stdout  # summaries printed by the launcher
    built = root / "beam" / "vggsound" / "tiny" / "1.0.0"
    assert not (built / _beam_build().STAGING_FOLDER).exists()
    beam = tfds.builder_from_directory(str(built))
    _assert_same_examples(plain, beam)

    beam_reports = _reports(beam)
    assert beam_reports == _reports(plain)
    # Every bad clip the generator wrote is in the reports, under its kind.
    listed = {}
    for report in beam_reports.values():
        assert report["complete"]
        assert report["csv_rows"] == report["examples_written"] + report["examples_skipped"]
        for kind, entries in report["first"].items():
            assert len(entries) == report["counts"][kind]
            listed.setdefault(kind, set()).update(e["name"] for e in entries)
    expected = {EDGE_TO_KIND[edge]: set(ids) for edge, ids in summary["edge_cases"].items()}
    assert listed == expected
    assert sum(r["csv_rows"] for r in beam_reports.values()) == len(summary["clips"])


# ---------------------------------------------------------------------------------------
# AudioSet and EPIC-Kitchens in this process


def test_audioset_beam_build_equals_plain_build_and_counters_agree(tmp_path):
    manual = tmp_path / "manual"
    summary = synthetic.generate("audioset", str(manual), 6, num_classes=3)
    (manual / "subset_ids.txt").write_text(summary["clips"][0]["ytid"] + "\n")
    plain = _build(audioset.Audioset, "tiny", manual, tmp_path / "plain")
    beam = _build(
        audioset.Audioset, "tiny", manual, tmp_path / "beam", _beam_options(MULTI_THREADING)
    )
    _assert_same_examples(plain, beam)
    reports = _reports(beam)
    assert reports == _reports(plain)
    assert "subset" in reports
    bad = sum(sum(r["counts"].values()) for r in reports.values())
    assert bad >= len(EDGE_TO_KIND)  # every edge case (a clip may be in two splits' lists)
    for split, report in reports.items():
        assert beam.beam_counters[split] == {
            "csv_rows": report["csv_rows"],
            "examples_written": report["examples_written"],
            **{kind: count for kind, count in report["counts"].items() if count},
        }


def test_epic_hdf5_beam_build_through_the_module_cli_equals_plain_build(tmp_path, capsys):
    manual = tmp_path / "manual"
    synthetic.generate("epic_kitchens", str(manual), 6, hdf5_audio=True)
    config = "tiny_hdf5_audio"  # the reader holds the HDF5 file open on each worker
    plain = _build(epic_kitchens.EpicKitchens, config, manual, tmp_path / "plain")
    # Beam options without a runner: Beam's default, the DirectRunner (in this process).
    builders_main.main(
        [
            "--dataset=epic_kitchens",
            f"--config={config}",
            f"--manual_dir={manual}",
            f"--data_dir={tmp_path / 'beam'}",
            "--beam_pipeline_options=direct_num_workers=1",
        ]
    )
    out = capsys.readouterr().out
    assert "[epic_kitchens/tiny_hdf5_audio train]" in out
    assert "the Beam counters agree with the reports" in out  # built through Beam
    built = tmp_path / "beam" / "epic_kitchens" / config / "1.0.0"
    beam = tfds.builder_from_directory(str(built))
    _assert_same_examples(plain, beam)
    assert _reports(beam) == _reports(plain)


# ---------------------------------------------------------------------------------------
# Every builder takes the Beam path


@pytest.mark.parametrize(
    "builder_cls, dataset, kwargs",
    [
        (vggsound.Vggsound, "vggsound", {}),
        (audioset.Audioset, "audioset", {"num_classes": 3}),
        (epic_kitchens.EpicKitchens, "epic_kitchens", {}),
        (
            sounding_objects.SoundingObjects,
            "sounding_objects",
            {"frame_size": 32, "clip_seconds": 3.2},
        ),
    ],
)
def test_every_builder_gives_beam_a_picklable_reader(tmp_path, builder_cls, dataset, kwargs):
    manual = tmp_path / "manual"
    synthetic.generate(dataset, str(manual), 2, edge_cases=False, **kwargs)
    builder = builder_cls(config=builder_cls.BUILDER_CONFIGS[0].name, data_dir=str(tmp_path))
    builder._use_beam = True  # what `download_and_prepare` sets from a Beam DownloadConfig
    builder._beam_splits = []
    dl_manager = tfds.download.DownloadManager(
        download_dir=str(tmp_path / "downloads"),
        manual_dir=str(manual),
        manual_dir_instructions=builder.MANUAL_DOWNLOAD_INSTRUCTIONS,
    )
    splits = builder._split_generators(dl_manager)
    assert splits and all(isinstance(s, _beam_build().ReadClips) for s in splits.values())
    transform = next(iter(splits.values()))
    reader, row = transform._reader, transform._located[0]
    assert isinstance(reader, base.ClipReader)
    # What a worker gets reads the row as the builder's own loop does.
    from apache_beam.internal import pickler

    shipped = pickler.loads(pickler.dumps(reader))
    report, shipped_report = transform._report.row_report(), transform._report.row_report()
    with reader.opened(), shipped.opened():
        key, example = reader.read(row, report)
        shipped_key, shipped_example = shipped.read(row, shipped_report)
    assert shipped_key == key and shipped_report.written == report.written == 1
    np.testing.assert_array_equal(shipped_example["rgb"], example["rgb"])
    np.testing.assert_array_equal(shipped_example["audio"], example["audio"])
