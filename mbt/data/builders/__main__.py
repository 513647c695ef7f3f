"""Build one of the datasets without the `tfds` CLI (which needs apache-beam in TFDS 4.9.10).

    python -m mbt.data.builders --dataset=vggsound --config=tiny \
        --manual_dir=DIR --data_dir=OUT [--overwrite]

Same result as `tfds build mbt/data/builders/vggsound.py --config=tiny --manual_dir=DIR
--data_dir=OUT`: the prepared dataset in OUT/<dataset>/<config>/<version>/ with a
`build_report_<split>.json` per split.
"""

from __future__ import annotations

import argparse
import shutil

from mbt.data import registry


def _builder_names() -> list[str]:
    """Registered datasets with a TFDS builder (mbt.data.registry)."""
    return [name for name in registry.names() if registry.get(name).builder]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=_builder_names())
    parser.add_argument("--config", default="default", help="builder config name")
    parser.add_argument("--manual_dir", required=True, help="the local copy of the dataset")
    parser.add_argument("--data_dir", required=True, help="where TFDS writes the dataset")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an already prepared copy of this config first",
    )
    args = parser.parse_args(argv)

    import tensorflow_datasets as tfds

    builder_cls = registry.load(registry.get(args.dataset).builder)
    configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
    if args.config not in configs:
        parser.error(
            f"--config={args.config!r} is not a config of {args.dataset}; allowed: {configs}"
        )
    builder = builder_cls(config=args.config, data_dir=args.data_dir)
    if args.overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_dir)
        builder = builder_cls(config=args.config, data_dir=args.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir)
    )
    print(
        f"{args.dataset}/{args.config} prepared in {builder.data_dir}: "
        + ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    )


if __name__ == "__main__":
    main()
