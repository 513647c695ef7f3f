"""The absl command lines (`mbt.cli`): no flag collisions in one process, argparse-like parsing."""

import os
import re

import pytest
import script_fixtures
from absl import flags

from mbt import cli
from mbt import main  # noqa: F401  (its flags live on the global absl FLAGS)
from mbt import predict
from mbt.data import synthetic
from mbt.data.builders import __main__ as builders_main
from mbt.experiments import __main__ as experiments_main
from mbt.tools import attention
from mbt.tools import flops  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cli_defines_its_flags_on_its_own_flag_values_and_twice():
    scripts = [
        script_fixtures.load_script(n)
        for n in (
            "compare_compute",
            "benchmark_input",
            "benchmark_build",
            "fusion_flops",
            "cross_fusion_benchmark",
        )
    ]
    for module in [predict, attention, synthetic, builders_main, experiments_main, *scripts]:
        first, second = module._flags(), module._flags()
        assert first is not flags.FLAGS and second is not first
        assert any(name in first for name in ("out", "workdir", "dataset"))
    # Same names as the global flags of mbt.main, no DuplicateFlagError.
    assert "workdir" in flags.FLAGS and "workdir" in predict._flags()


def test_parse_mixes_flags_and_positionals_and_keeps_no_state():
    args = predict._flags()
    rest = cli.parse(
        args,
        ["--workdir", "W", "a.mp4", "--json", "--top_k=2", "b.wav", "--scenic_checkpoint=C"],
        prog="p",
        positional="FILE",
    )
    assert rest == ["a.mp4", "b.wav"]
    assert (args.workdir, args.json, args.top_k, args.checkpoint) == ("W", True, 2, "C")
    fresh = predict._flags()
    cli.parse(fresh, ["x.mp4"], prog="p", positional="FILE")
    assert (fresh.workdir, fresh.json, fresh.top_k) == (None, False, 5)


def test_parse_bools_named_no_and_required_flags():
    args = synthetic._flags()
    cli.parse(args, ["--dataset=vggsound", "--out=o", "--no_edge_cases"], prog="p")
    assert args.no_edge_cases and not args.hdf5_audio and args.num_clips == 24


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out=o"], "--dataset must have a value other than None"),
        (["--dataset=ucf", "--out=o"], "value should be one of"),
        (["--dataset=vggsound", "--out=o", "--nope=1"], "Unknown command line flag 'nope'"),
        (["--dataset=vggsound", "--out=o", "extra"], "unexpected arguments: extra"),
    ],
)
def test_parse_errors_exit_2_with_the_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(synthetic._flags(), argv, prog="python -m mbt.data.synthetic")
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_flags_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m mbt.data.synthetic [flags]")
    assert re.search(r"--num_clips: .*\n\s+\(default: '24'\)", out)


def test_no_argparse_left():
    for top in ("mbt", "scripts"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name), encoding="utf-8") as f:
                        assert "import argparse" not in f.read(), os.path.join(root, name)
