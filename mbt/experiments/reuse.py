"""`run --reuse_from=DIR`: a run whose config equals a finished run's in another experiment is
linked from it instead of trained again.

The papers' experiments share their baselines: at the demo size six of the catalogue's runs
(the demo MBT at fusion layer 1 with 4 bottlenecks, in mbt_fusion_lf, mbt_bottlenecks,
mbt_clip_span, mbt_data_fraction, mbt_modalities and sft_vs_mbt) resolve to the same config.
With `--reuse_from`, `run` looks for a finished run with an equal resolved config (every key,
`mbt.workdir`'s comparison) in the named folders: experiment folders (`DIR/<run>/`) or
folders of them (`DIR/<experiment>/<run>/`, as the default `--out` root). Found, its files go
into the new run's folder, which is then a complete workdir: checkpoints and export as hard
links (copies where the folders are on different file systems), the rest copied; its record
names the source in `reused_from`. Only a run that has not started is linked, and a run that
needs robustness results only from a source that has them.

The demo runs read the synthetic copy their experiment prepared in `<out>/data`, so their
configs name different `dataset.data_dir`s; with `--reuse_from`, `prepare` reads an equal copy
(same generator settings, in `data/copy.json`) from the named folders instead of making one.

Equal configs give equal runs only for the same code: name only folders trained by this
version of mbt.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from collections.abc import Sequence

import ml_collections

from mbt import checkpointing
from mbt import workdir as workdir_lib
from mbt.experiments import records


def _finished_runs(roots: Sequence[str]) -> Iterator[str]:
    """Workdirs under `roots` (one or two levels down) whose record says they finished."""
    seen = set()
    for root in roots:
        patterns = (
            os.path.join(root, "*", records.RUN_FILE),
            os.path.join(root, "*", "*", records.RUN_FILE),
        )
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                workdir = os.path.dirname(path)
                real = os.path.realpath(workdir)
                if real not in seen and records.run_record(workdir).get("finished"):
                    seen.add(real)
                    yield workdir


COPY_FILE = "copy.json"  # `<out>/data/copy.json`: the settings of the demo copy prepared there


def save_copy_identity(data_folder: str, identity: str) -> None:
    """Records which demo copy `data_folder` holds (written once it is built)."""
    records.write_json(os.path.join(data_folder, COPY_FILE), {"copy": identity})


def find_same_copy(identity: str, roots: Sequence[str]) -> str | None:
    """A `data` folder under `roots` (`DIR/data`, `DIR/<experiment>/data`) holding the demo
    copy `identity`; None if there is none."""
    for root in roots:
        for pattern in (os.path.join(root, "data"), os.path.join(root, "*", "data")):
            for folder in sorted(glob.glob(pattern)):
                saved = records.read_json(os.path.join(folder, COPY_FILE)) or {}
                if saved.get("copy") == identity:
                    return folder
    return None


def find_same_run(
    config: ml_collections.ConfigDict,
    roots: Sequence[str],
    *,
    needs_robustness: bool,
    exclude: str,
) -> str | None:
    """The first finished run under `roots` (not `exclude`) trained with a config equal to
    `config`, holding robustness results if `needs_robustness`; None if there is none."""
    for workdir in _finished_runs(roots):
        if os.path.realpath(workdir) == os.path.realpath(exclude):
            continue
        if needs_robustness and not os.path.isfile(os.path.join(workdir, records.ROBUSTNESS_FILE)):
            continue
        try:
            saved = workdir_lib.load_config(workdir)
        except (FileNotFoundError, ValueError):
            continue
        if not workdir_lib.structure_differences(
            saved, config
        ) and not workdir_lib.other_differences(saved, config):
            return workdir
    return None


# Written once and never changed in place: hard-linked. Everything else (records, results,
# tables, logs: small) is copied, so a later write in one folder never shows in the other.
LINKED_SUBDIRS = ("checkpoints", "export")


def link_run(source: str, workdir: str) -> None:
    """Fills `workdir` (absent or empty) with the files of the finished run in `source`:
    hard links for its checkpoints and export (copies across file systems), copies of the rest.
    The training lock is left out (a hard link would share the source's lock)."""
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ValueError(f"{workdir} is not empty; a run is only linked into an empty folder")
    linked = tuple(os.path.join(os.path.abspath(source), d) + os.sep for d in LINKED_SUBDIRS)

    def link_or_copy(src: str, dst: str) -> None:
        if os.path.abspath(src).startswith(linked):
            try:
                os.link(src, dst)
                return
            except OSError:  # another file system, or one without hard links
                pass
        shutil.copy2(src, dst)

    shutil.copytree(
        source,
        workdir,
        copy_function=link_or_copy,
        ignore=shutil.ignore_patterns(checkpointing.LOCK_FILE),
        dirs_exist_ok=True,
    )
