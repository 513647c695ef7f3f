"""On how many classes audio-visual fusion beats audio alone (MBT's per-class AudioSet analysis).

Reads `per_class` of the two runs' test results (a list of `{"index", "name", "ap", "top1",
"count"}`, at the top level of `results_<split>.json` or in its `metrics`); runs trained
before per-class results existed have none, and the comparison is then reported as
unavailable rather than failing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mbt.experiments import records

KEY = "fusion_vs_audio_per_class"


def per_class_rows(results: Mapping[str, Any] | None) -> list[Mapping[str, Any]] | None:
    """The `per_class` list of a results dict, or None when it has none."""
    if not results:
        return None
    rows = results.get("per_class")
    if rows is None:
        rows = (results.get("metrics") or {}).get("per_class")
    return list(rows) if rows else None


def compare(fused: list[Mapping[str, Any]], audio: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts the classes where `fused` scores higher / lower / the same as `audio`.

    Classes are matched by `index`; the score is `ap` where both runs have one, else `top1`
    (classes with neither in both runs are left out).
    """
    audio_by_index = {int(row["index"]): row for row in audio}
    counts = {"fusion_better": 0, "audio_better": 0, "equal": 0}
    better, metrics_used = [], set()
    for row in fused:
        other = audio_by_index.get(int(row["index"]))
        if other is None:
            continue
        for key in ("ap", "top1"):
            if row.get(key) is not None and other.get(key) is not None:
                metrics_used.add(key)
                a, b = float(row[key]), float(other[key])
                if a > b:
                    counts["fusion_better"] += 1
                    better.append(str(row.get("name", row["index"])))
                elif a < b:
                    counts["audio_better"] += 1
                else:
                    counts["equal"] += 1
                break
    return {
        "metric": "/".join(sorted(metrics_used)) or None,
        "classes": sum(counts.values()),
        **counts,
        "fusion_better_classes": better,
    }


def fusion_vs_audio(out: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`{KEY: comparison}` for `mbt_modalities` (runs 'fusion' and 'audio_only' in `out`);
    the comparison is None, with `KEY + '_missing'` saying why, when either lacks per-class
    results."""
    del rows
    found = {
        run: per_class_rows(records.test_results(os.path.join(out, run)))
        for run in ("fusion", "audio_only")
    }
    missing = [run for run, value in found.items() if value is None]
    if missing:
        return {KEY: None, KEY + "_missing": f"no per-class test results for {missing}"}
    return {KEY: compare(found["fusion"] or [], found["audio_only"] or [])}
