"""`python -m mbt.experiments`: every experiment expands into valid configs, prints `mbt.main`
commands that rebuild them, runs two of its runs at a minimal size and collects a table.

The runs share one tiny demo copy (24 clips: 18 train / 6 test videos) prepared once by the
`prepare` command, and train 2 steps each (`--set`), so what is checked is the machinery, not
the accuracy.
"""

import contextlib
import io
import json
import logging
import os
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from mbt import config_validation
from mbt import train
from mbt import workdir as workdir_lib
from mbt.experiments import __main__ as cli_main
from mbt.experiments import catalogue
from mbt.experiments import collect as collect_lib
from mbt.experiments import per_class
from mbt.experiments import records
from mbt.experiments import runner
from mbt.experiments import runs as runs_lib
from mbt.tools import flops

pytestmark = pytest.mark.usefixtures("release_after_each_run")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_RUN = (
    "num_train_steps=2",
    "batch_size=8",  # one example per simulated device
    "eval_batch_size=8",
    "dataset.num_test_clips=1",
    "log_every_steps=1",
    "checkpoint.use_async=false",  # orbax's async close waits ~5 s per run
)
# Two runs per experiment, where possible ones whose programs coincide with another
# experiment's (the demo's own MBT, its late fusion), so the compilation cache serves them.
TWO_RUNS = {
    "mbt_fusion_lf": ("bottleneck_lf1", "bottleneck_lf2"),
    "mbt_bottlenecks": ("b1", "b4"),
    "mbt_clip_span": (),  # the two shortest spans of the demo's clip (`_two_runs`)
    "mbt_mixup": ("none", "modality_mixup"),
    "mbt_data_fraction": ("late_frac0.25", "mbt_frac1"),
    "mbt_modalities": ("audio_only", "fusion"),
    "sft_vs_mbt": ("mbt", "sft"),
    "clstm_noise": ("clstm_fuse0", "clstm_fuse2"),
}
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _two_runs(name: str) -> tuple[str, ...]:
    """`TWO_RUNS[name]`, or the first two runs of the demo expansion where it names none."""
    if TWO_RUNS[name]:
        return TWO_RUNS[name]
    return tuple(r.name for r in catalogue.get(name).expand(runs_lib.Bases("demo"))[:2])


def _main(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main.main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """`--set` flags that point every run at one prepared 24-clip demo copy."""
    out = str(tmp_path_factory.mktemp("tiny_data"))
    code, stdout = _main(
        "prepare",
        "mbt_mixup",
        f"--out={out}",
        "--set=dataset.synthetic.num_clips=24",
        "--set=dataset.synthetic.edge_cases=false",
    )
    data_dir = os.path.join(out, "data", "tfds")
    assert code == 0 and data_dir in stdout
    demo = runs_lib.Bases("demo").get("model=mbt,modalities=av").dataset
    assert os.path.isdir(os.path.join(data_dir, demo.name, demo.builder_config or ""))
    return [
        f"--set=dataset.data_dir={data_dir}",
        "--set=dataset.synthetic.num_clips=0",
        *(f"--set={s}" for s in SMALL_RUN),
    ]


def test_the_catalogue_has_the_papers_experiments():
    assert list(catalogue.EXPERIMENTS) == list(TWO_RUNS)
    code, stdout = _main("list")
    assert code == 0
    assert [line.split()[0] for line in stdout.strip().splitlines()] == list(TWO_RUNS)


@pytest.mark.parametrize("data", list(runs_lib.DATA_CONFIGS))
@pytest.mark.parametrize("name", list(TWO_RUNS))
def test_every_experiment_expands_into_valid_configs(name, data):
    bases = runs_lib.Bases(data)
    runs = catalogue.get(name).expand(bases)
    names = [r.name for r in runs]
    assert len(names) >= 2 and len(set(names)) == len(names)
    assert all(NAME.match(n) for n in names), names
    for run in runs:
        config = runs_lib.build_config(bases, run, {}, {})
        config_validation.validate_config(config, mesh_shape=(8, 1))
        assert not config.get("siblings")  # the demo's own sibling runs are off
        flat = _flatten(config.to_dict())
        for key, value in run.swept.items():
            if key in flat:  # a config key (not a derived column such as span_s)
                assert flat[key] == value, (run.name, key)
        for key, value in run.overrides.items():
            assert flat[key] == value, (run.name, key)


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_demo_sweeps_follow_the_demo_config():
    bases = runs_lib.Bases("demo")
    base = bases.get("model=mbt,modalities=av")
    layers = base.model.num_layers  # 2 in configs/synthetic.py
    lf = catalogue.get("mbt_fusion_lf").expand(bases)
    assert [r.name for r in lf] == [
        f"{fusion}_lf{k}" for fusion in ("bottleneck", "cross", "concat") for k in range(layers + 1)
    ]
    spans = catalogue.get("mbt_clip_span").expand(bases)
    clip = base.dataset.synthetic.clip_seconds
    assert [r.swept["span_s"] for r in spans][-1] == clip
    # The config's frames spread over t seconds: the nearest stride (configs/synthetic.py:
    # 4 frames of a 10 fps copy, strides 1, 2, 4, 5 for t = 0.5 ... 2 s).
    frames, fps = base.dataset.num_frames, base.dataset.synthetic.fps
    for run in spans:
        covered = run.overrides["dataset.stride"] * frames / fps
        assert abs(covered - run.swept["span_s"]) <= frames / fps / 2 or covered == frames / fps
        assert run.overrides["dataset.audio_seconds"] == run.swept["span_s"]
    modalities = catalogue.get("mbt_modalities").expand(bases)
    assert {r.name: r.overrides.get("model.fusion_layer") for r in modalities} == {
        "audio_only": None,
        "rgb_only": None,
        "late_fusion": layers,
        "fusion": base.model.fusion_layer,
    }
    noise = catalogue.get("clstm_noise").expand(bases)
    clstm_layers = bases.get("model=clstm,modalities=av").model.num_layers
    assert all(r.robustness for r in noise) and len(noise) == clstm_layers + 1
    # Real data: the paper's values.
    real = runs_lib.Bases("audioset")
    assert {
        r.overrides["model.fusion_layer"] for r in catalogue.get("mbt_fusion_lf").expand(real)
    } == {0, 2, 4, 6, 8, 10, 12}
    fractions = catalogue.get("mbt_data_fraction").expand(real)
    assert {r.arg for r in fractions} == {"model=mbt,modalities=av,split=500k"}  # AS-500K


@pytest.mark.parametrize("data", ["demo", "vggsound"])
@pytest.mark.parametrize("name", list(TWO_RUNS))
def test_dry_run_commands_rebuild_the_run_configs(name, data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = str(tmp_path / name)
    sets = ["--set=num_train_steps=3", "--set=lr.base_lr=0.01"]
    code, stdout = _main("run", name, f"--data={data}", f"--out={out}", "--dry_run", *sets)
    assert code == 0
    lines = [line for line in stdout.splitlines() if not line.startswith("#")]
    bases = runs_lib.Bases(data)
    runs = catalogue.get(name).expand(bases)
    assert len(lines) == len(runs)
    # The demo's data is prepared once, in <out>/data, by the printed `prepare` command.
    assert ("# prepare the data once, first: python -m mbt.experiments prepare" in stdout) == (
        data == "demo"
    )
    for run, line in zip(runs, lines):
        train_part, _, robustness = line.partition(" && ")
        argv = shlex.split(train_part)
        assert argv[:3] == ["python", "-m", "mbt.main"]
        assert argv[3] == f"--config=configs/{runs_lib.DATA_CONFIGS[data]}:{run.arg}"
        assert argv[4] == f"--workdir={os.path.join(out, run.name)}"
        parsed = _parse_like_mbt_main(argv[3:])
        extra = (
            {
                "dataset.data_dir": os.path.join(out, "data", "tfds"),
                "dataset.synthetic.num_clips": 0,
            }
            if data == "demo"
            else {}
        )
        built = runs_lib.build_config(
            bases, run, {"num_train_steps": "3", "lr.base_lr": "0.01"}, extra
        )
        assert parsed.to_dict() == built.to_dict(), run.name
        # ...and the strings carried the intended values, not look-alikes (e.g. '1' for 1.0).
        direct = bases.get(run.arg)
        direct.siblings = {}
        for key, value in {**run.overrides, **extra}.items():
            *parents, leaf = key.split(".")
            node = direct
            for part in parents:
                node = node[part]
            node[leaf] = value
        direct.num_train_steps, direct.lr.base_lr = 3, 0.01
        assert parsed.to_dict() == direct.to_dict(), run.name
        assert bool(robustness) == run.robustness
        if run.robustness:
            assert shlex.split(robustness) == [
                "python",
                "-m",
                "mbt.main",
                f"--workdir={os.path.join(out, run.name)}",
                "--mode=robustness",
            ]


def _parse_like_mbt_main(argv):
    """`--config=FILE:ARG --workdir=W --config.key=value ...` parsed as `mbt.main` does."""
    flag_values = flags.FlagValues()
    full = ["mbt.main", *argv]
    holder = config_flags.DEFINE_config_file(
        "config", None, flag_values=flag_values, lock_config=True, sys_argv=full
    )
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flag_values(full)
    return holder.value


def test_random_input_runs_need_no_prepared_copy(tmp_path):
    """With `dataset.random_input.enabled`, the demo experiments prepare no synthetic copy and
    every run reads random batches (`mbt.train.data_source`)."""
    bases = runs_lib.Bases("demo")
    chosen = catalogue.get("mbt_mixup").expand(bases)[:2]
    sets = {"dataset.random_input.enabled": "True"}
    assert runner.prepare_data(bases, chosen, str(tmp_path), sets) == {}
    assert os.listdir(tmp_path) == []
    config = runs_lib.build_config(bases, chosen[0], sets, {})
    assert runner.needs_prepared_copy(runs_lib.build_config(bases, chosen[0], {}, {}))
    assert type(train.data_source(config, str(tmp_path))).__name__ == "RandomData"


def test_bad_flags_exit_2_naming_what_is_wrong(capsys):
    for argv, message in (
        (["run", "mbt_nope"], "unknown experiment 'mbt_nope'; known: mbt_fusion_lf"),
        (["run", "mbt_mixup", "--only=nope", "--dry_run"], "--only names no run.*'none'"),
        (["run", "mbt_mixup", "--set=model.no_such_key=1", "--dry_run"], "no_such_key"),
        (["run", "mbt_mixup", "--set=num_train_steps", "--dry_run"], "must look like KEY=VALUE"),
        (["run", "mbt_mixup", "--set=dataset.train_fraction=2.0", "--dry_run"], "train_fraction"),
        (["run", "mbt_mixup", "--reuse_from=/no/such/dir"], "--reuse_from names.*/no/such/dir"),
        (["frobnicate"], "give a command: one of list, run, collect, prepare"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main.main(argv)
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), (argv, message)


def _check_table(out, name, ran, metric="top1"):
    with open(os.path.join(out, "table.json"), encoding="utf-8") as f:
        table = json.load(f)
    experiment = catalogue.get(name)
    all_runs = [r.name for r in experiment.expand(runs_lib.Bases("demo"))]
    assert table["experiment"] == name and table["metric"] == metric
    assert table["data"] == "demo" and table["commands"][-1].startswith(
        f"python -m mbt.experiments run {name} "
    )
    assert [row["run"] for row in table["rows"]] == [r for r in all_runs if r in ran]
    assert table["unfinished"] == [r for r in all_runs if r not in ran]
    swept = {r.name: r.swept for r in experiment.expand(runs_lib.Bases("demo"))}
    for row in table["rows"]:
        assert 0.0 <= row[metric] <= 1.0
        assert row["gflops"] > 0 and isinstance(row["params"], int) and row["params"] > 0
        assert row["train_seconds"] > 0
        for key, value in swept[row["run"]].items():
            assert row[key] == value
    with open(os.path.join(out, "table.md"), encoding="utf-8") as f:
        text = f.read()
    assert f"# {name} (" in text
    assert f"Not finished: {len(table['unfinished'])} of {len(all_runs)} runs" in text
    for row in table["rows"]:
        assert f"| {row['run']} |" in text
    with open(os.path.join(out, "plot.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return table


@pytest.fixture(scope="module")
def experiments_root(tmp_path_factory):
    """One folder for the experiments below, `--reuse_from` of each: six of their runs are
    the same demo MBT config, trained by the first and linked by the others."""
    return str(tmp_path_factory.mktemp("experiments"))


@pytest.mark.parametrize("name", list(TWO_RUNS))
def test_each_experiment_runs_two_small_runs_and_collects_a_table(
    name, tiny_data, experiments_root
):
    out = os.path.join(experiments_root, name)
    code, stdout = _main(
        "run",
        name,
        f"--out={out}",
        f"--only={','.join(_two_runs(name))}",
        f"--reuse_from={experiments_root}",
        *tiny_data,
    )
    assert code == 0
    table = _check_table(out, name, _two_runs(name))
    assert stdout.startswith(f"# {name} (")  # run prints table.md at the end
    params = {row["run"]: row["params"] for row in table["rows"]}
    for run in _two_runs(name):
        record = records.run_record(os.path.join(out, run))
        assert record["finished"] and record["attempts"] == 1
        assert record["num_classes"] > 1 and set(record["input_shapes"]) >= {"spectrogram"}
        assert params[run] == record["num_params"]  # counted from the trained state
        if record.get("reused_from"):  # an earlier experiment's run with an equal config
            _check_reused(os.path.join(out, run), record["reused_from"], experiments_root)
        if name in ("sft_vs_mbt", "clstm_noise"):  # the three families: as the flops tool counts
            config = workdir_lib.load_config(os.path.join(out, run))
            shapes = {m: tuple(s) for m, s in record["input_shapes"].items()}
            report = flops.analyse(config.model, shapes, record["num_classes"], xla="none")
            assert record["num_params"] == report.num_params
    if name == "sft_vs_mbt":
        assert all(row["train_memory_mib"] > 0 for row in table["rows"])
    if name == "clstm_noise":
        for row in table["rows"]:
            noise = row["noise"]
            assert set(noise) >= {"clean", "audio", "video", "both"}
            assert list(noise["audio"]) == ["20", "10", "5", "0", "-5"]
        assert "| clstm_fuse0 | audio |" in open(os.path.join(out, "table.md")).read()
    if name == "mbt_modalities":
        assert per_class.KEY in table  # None, saying why, until test results hold per_class
        if table[per_class.KEY] is None:
            assert "per-class" in table[per_class.KEY + "_missing"]


def _check_reused(workdir: str, source: str, root: str) -> None:
    """`workdir` holds the finished run of `source` (another experiment's, under `root`)."""
    assert os.path.dirname(os.path.dirname(source)) == root
    assert os.path.dirname(source) != os.path.dirname(workdir)
    saved, given = workdir_lib.load_config(source), workdir_lib.load_config(workdir)
    assert saved.to_dict() == given.to_dict()
    assert records.test_results(workdir) == records.test_results(source)
    linked = 0
    for folder, _, files in os.walk(os.path.join(source, "checkpoints")):
        for name in files:
            path = os.path.join(folder, name)
            copy = os.path.join(workdir, os.path.relpath(path, source))
            assert os.path.samefile(path, copy)  # a hard link, not a second copy
            linked += 1
    assert linked > 0
    assert not os.path.exists(os.path.join(workdir, "train.lock"))
    record, source_record = records.run_record(workdir), records.run_record(source)
    assert record["train_seconds"] == source_record["train_seconds"]
    assert (
        record["run"] == os.path.basename(workdir)
        and record["experiment"] != source_record["experiment"]
    )


def test_a_finished_run_is_skipped_and_an_interrupted_one_resumes(tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mbt")
    out = str(tmp_path / "mixup")
    argv = ["run", "mbt_mixup", f"--out={out}", "--only=none", *tiny_data]
    assert _main(*argv)[0] == 0
    workdir = os.path.join(out, "none")
    first = records.run_record(workdir)
    # As if stopped after its checkpoint at step 2 of 3: the next `run` resumes there.
    records.save_run_record(workdir, {**first, "finished": False})
    caplog.clear()
    assert _main(*argv, "--set=num_train_steps=3")[0] == 0
    assert "Resumed at step 2 of 3" in caplog.text
    second = records.run_record(workdir)
    assert second["finished"] and second["attempts"] == 2
    assert second["train_seconds"] > first["train_seconds"]  # summed over both attempts
    with open(os.path.join(workdir, "results_test.json"), encoding="utf-8") as f:
        assert json.load(f)["step"] == 3
    caplog.clear()
    assert _main(*argv, "--set=num_train_steps=3")[0] == 0
    assert "Skipping run none: it finished" in caplog.text
    assert records.run_record(workdir)["attempts"] == 2
    # collect alone rebuilds the same table from the run folders.
    table = json.load(open(os.path.join(out, "table.json")))
    code, _ = _main("collect", "mbt_mixup", f"--out={out}")
    assert code == 0 and json.load(open(os.path.join(out, "table.json"))) == table
    # The same run in another folder, asking for a demo copy of its own but with --reuse_from
    # naming the folder that prepared an equal one and this run's: both are reused.
    caplog.clear()
    data_dir = tiny_data[0].split("=", 2)[2]  # --set=dataset.data_dir=<prepared>/data/tfds
    prepared = os.path.dirname(os.path.dirname(data_dir))
    again = str(tmp_path / "elsewhere")
    own_copy = [
        "--set=dataset.synthetic.num_clips=24",  # as `tiny_data` prepared it
        "--set=dataset.synthetic.edge_cases=false",
        *(f"--set={s}" for s in SMALL_RUN),
        "--set=num_train_steps=3",
    ]
    argv_again = ["run", "mbt_mixup", f"--out={again}", "--only=none", *own_copy]
    assert _main(*argv_again, f"--reuse_from={prepared},{tmp_path}")[0] == 0
    assert f"Reading the demo copy in {os.path.join(prepared, 'data')}" in caplog.text
    assert "linked it into" in caplog.text and "Training from scratch" not in caplog.text
    assert not os.path.exists(os.path.join(again, "data"))  # no copy of its own
    linked = records.run_record(os.path.join(again, "none"))
    assert linked["reused_from"] == os.path.abspath(workdir) and linked["finished"]
    assert records.test_results(os.path.join(again, "none")) == records.test_results(workdir)


def test_per_class_comparison_counts_classes_and_reports_missing_results(tmp_path):
    fused = [
        {"index": 0, "name": "a", "ap": 0.9, "top1": 1.0, "count": 3},
        {"index": 1, "name": "b", "ap": 0.2, "top1": 0.0, "count": 3},
        {"index": 2, "name": "c", "ap": None, "top1": 0.5, "count": 2},
        {"index": 3, "name": "d", "ap": None, "top1": None, "count": 0},
    ]
    audio = [
        {"index": 0, "name": "a", "ap": 0.5, "top1": 0.0, "count": 3},
        {"index": 1, "name": "b", "ap": 0.4, "top1": 1.0, "count": 3},
        {"index": 2, "name": "c", "ap": None, "top1": 0.5, "count": 2},
        {"index": 3, "name": "d", "ap": None, "top1": None, "count": 0},
    ]
    found = per_class.compare(fused, audio)
    assert (found["classes"], found["fusion_better"], found["audio_better"], found["equal"]) == (
        3,
        1,
        1,
        1,
    )
    assert found["fusion_better_classes"] == ["a"] and found["metric"] == "ap/top1"
    # Results with per-class rows (top level or in metrics) are read; absent ones are reported.
    for run, rows in (("fusion", fused), ("audio_only", audio)):
        records.write_json(
            str(tmp_path / run / "results_test.json"),
            {"metrics": {"top1": 0.5, "per_class": rows}, "mode": "test"},
        )
    assert per_class.fusion_vs_audio(str(tmp_path), [])[per_class.KEY]["fusion_better"] == 1
    os.remove(tmp_path / "audio_only" / "results_test.json")
    missing = per_class.fusion_vs_audio(str(tmp_path), [])
    assert missing[per_class.KEY] is None and "audio_only" in missing[per_class.KEY + "_missing"]
    text = collect_lib.markdown(
        {
            "experiment": "mbt_modalities",
            "figure": "f",
            "description": "d",
            "data": "demo",
            "metric": "top1",
            "rows": [],
            "unfinished": ["fusion"],
            **missing,
        }
    )
    assert "Per-class comparison unavailable: no per-class test results for ['audio_only']" in text


def test_compute_stats_counts_parameters_from_the_record_or_else_by_tracing():
    config = runs_lib.Bases("demo").get("model=mbt,modalities=av")
    record = {"input_shapes": {"rgb": [4, 32, 32, 3], "spectrogram": [100, 32, 1]}}
    record["num_classes"] = 6
    traced = collect_lib.compute_stats(config, record, train_memory=False)  # an older record
    shapes = {m: tuple(s) for m, s in record["input_shapes"].items()}
    assert traced["params"] == flops.analyse(config.model, shapes, 6, xla="none").num_params
    recorded = collect_lib.compute_stats(config, {**record, "num_params": 123}, False)
    assert recorded == {"gflops": traced["gflops"], "params": 123}
