"""Build one of the datasets without the `tfds` CLI (which needs apache-beam in TFDS 4.9.10).

    python -m mbt.data.builders --dataset=vggsound --config=tiny \
        --manual_dir=DIR --data_dir=OUT [--overwrite] [--imports=my_pkg.my_dataset] \
        [--beam_pipeline_options=runner=DirectRunner,direct_num_workers=4]

Same result as `tfds build mbt/data/builders/vggsound.py --config=tiny --manual_dir=DIR
--data_dir=OUT [--beam_pipeline_options=...]`: the prepared dataset in
OUT/<dataset>/<config>/<version>/ with a `build_report_<split>.json` per split.
"""

from __future__ import annotations

import shutil

from absl import flags

from mbt import cli
from mbt.data import registry

_PROG = "python -m mbt.data.builders"


def _flags() -> flags.FlagValues:
    """The CLI's flags, on their own `FlagValues` (see `mbt.cli`)."""
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "dataset", None, "dataset to build: a registered name (mbt.data.registry)", flag_values=fv
    )
    flags.DEFINE_list(
        "imports",
        [],
        "modules to import first, which register datasets defined outside mbt",
        flag_values=fv,
    )
    flags.DEFINE_string("config", "default", "builder config name", flag_values=fv)
    flags.DEFINE_string("manual_dir", None, "the local copy of the dataset", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "where TFDS writes the dataset", flag_values=fv)
    flags.DEFINE_bool(
        "overwrite", False, "delete an already prepared copy of this config first", flag_values=fv
    )
    flags.DEFINE_enum(
        "file_format",
        "tfrecord",
        ["tfrecord", "array_record"],
        "what the build writes: tfrecord (read through tf.data) or array_record (random "
        "access, read through grain: the input stream no process layout changes)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "beam_pipeline_options",
        None,
        "build with Apache Beam: comma-separated Beam pipeline options without the leading "
        "'--', as for `tfds build` (e.g. 'runner=DirectRunner,direct_num_workers=4,"
        "direct_running_mode=multi_processing'; docs/datasets.md)",
        flag_values=fv,
    )
    flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"], flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> None:
    args = _flags()
    cli.parse(args, argv, prog=_PROG, description=__doc__.splitlines()[0])

    import tensorflow_datasets as tfds

    registry.import_modules(args.imports)
    builders = {name: registry.get(name).builder for name in registry.names()}
    builder_path = builders.get(args.dataset)
    if builder_path is None:
        buildable = sorted(name for name, path in builders.items() if path)
        cli.usage_error(_PROG, f"--dataset={args.dataset!r}; allowed: {buildable}")
    builder_cls = registry.load(builder_path)
    configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
    if args.config not in configs:
        cli.usage_error(
            _PROG, f"--config={args.config!r} is not a config of {args.dataset}; allowed: {configs}"
        )

    def make_builder():
        return builder_cls(config=args.config, data_dir=args.data_dir, file_format=args.file_format)

    builder = make_builder()
    if args.overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_dir)
        builder = make_builder()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=args.manual_dir, beam_options=_beam_options(args.beam_pipeline_options)
        )
    )
    print(
        f"{args.dataset}/{args.config} prepared in {builder.data_dir}: "
        + ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    )


def _beam_options(options: str | None):
    """`PipelineOptions` of 'key=value,key=value' (as `tfds build` reads
    `--beam_pipeline_options`), or None to build without Beam."""
    if not options:
        return None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        cli.usage_error(
            _PROG,
            "--beam_pipeline_options needs apache-beam: pip install -e '.[tfds_cli]' "
            "(or apache-beam[gcp] for Dataflow)",
        )
    return PipelineOptions(flags=[f"--{option}" for option in options.split(",") if option])


if __name__ == "__main__":
    main()
