"""The papers' experiments as one command each: `python -m mbt.experiments`.

An experiment (`catalogue.EXPERIMENTS`) expands into named runs, each a config file of
`configs/` (`runs.DATA_CONFIGS[--data]`), its argument string and `--config.<key>` overrides
(`runs.Run`). `run` trains and tests them one after another through the normal trainer, each
in `<out>/<run name>` (`runner`), then `collect` writes `table.json`, `table.md` and
`plot.png` in `<out>` (`collect`). Modules:

- `runs`: Run, the `--data` -> config file table, config building and the `mbt.main`
  command of a run;
- `catalogue`: the experiments and the sweeps they derive from a config;
- `runner`: the shared demo data, one run (skip / resume / record its training seconds);
- `records`: what is kept on disk besides the trainer's files;
- `collect`, `plots`, `per_class`: the table, its plot, the per-class comparison.

Command line and experiments: docs/experiments.md.
"""
