"""The PNG of `mbt.tools.attention`: attention maps over the frames and the log-mel.

Layout (pixels at `DPI` = 80; sizes fixed so the file's size follows from the counts):

    +-------+--------+--------+-----+-----------------+
    |              header (HEADER_PX = 40)            |
    +-------+--------+--------+-----+-----------------+
    | input | frame0 | frame1 | ... | log-mel (2 cells)|   CELL_PX = 160 per row
    | query | map    | map    | ... | map             |   one row per query
    +-------+--------+--------+-----+-----------------+
     LABEL_PX = 160, then CELL_PX per rgb token time step, SPEC_CELLS · CELL_PX for the log-mel

`figure_pixels(time_steps, has_logmel, num_queries)` gives (width, height).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import numpy as np

from mbt.models import tokenizers

DPI = 80
CELL_PX = 160
LABEL_PX = 160
HEADER_PX = 40
SPEC_CELLS = 2
_PAD_PX = 6
_TITLE_PX = 16  # above the input row's cells
_SHORT = {"rgb": "rgb", "spectrogram": "audio"}


@dataclasses.dataclass
class ShownInputs:
    """The inputs under the maps.

    Attributes:
      frames: `[time steps, H, W, 3]` in [0, 1], one frame per rgb token time step (the
        tubelet's middle frame `t·pt + pt//2`, or the sampled frame); None without rgb.
      frame_times: `[time steps]` seconds of those frames from the view's start.
      frame_patch: (rows, columns) of pixels per token.
      logmel: `[time, mel]` (the model's normalised log-mel, channel 0); None without audio.
      logmel_patch: (time bins, mel bins) per token.
    """

    frames: np.ndarray | None = None
    frame_times: np.ndarray | None = None
    frame_patch: tuple[int, int] = (1, 1)
    logmel: np.ndarray | None = None
    logmel_patch: tuple[int, int] = (1, 1)


def shown_inputs(model, inputs: Mapping[str, np.ndarray], seconds_per_frame: float) -> ShownInputs:
    """The frames and log-mel of example 0 of `inputs` (model inputs), as the maps see them.

    `seconds_per_frame`: time between the model's input frames (stride / fps).
    """
    specs = dict(model.tokenizer_specs)
    shown = ShownInputs()
    if "rgb" in inputs:
        video_TxHxWx3 = np.asarray(inputs["rgb"][0], np.float32)
        spec = specs["rgb"]
        if spec.kind == "3d_conv":
            step = spec.patches[0]
            index = np.arange(video_TxHxWx3.shape[0] // step) * step + step // 2
        elif spec.kind == "temporal_sampling":
            index = tokenizers.sampled_frame_indices(video_TxHxWx3.shape[0], spec.sampled_frames())
        else:
            raise ValueError(f"rgb tokenizer kind {spec.kind!r} has no frames to draw")
        shown.frames = np.clip((video_TxHxWx3[index] + 1.0) / 2.0, 0.0, 1.0)
        shown.frame_times = index * seconds_per_frame
        shown.frame_patch = (spec.patches[-2], spec.patches[-1])
    if "spectrogram" in inputs:
        shown.logmel = np.asarray(inputs["spectrogram"][0, ..., 0], np.float32)
        patches = specs["spectrogram"].patches
        shown.logmel_patch = (patches[0], patches[1])
    return shown


def figure_pixels(time_steps: int, has_logmel: bool, num_queries: int) -> tuple[int, int]:
    """(width, height) of the PNG in pixels."""
    columns = time_steps + (SPEC_CELLS if has_logmel else 0)
    return LABEL_PX + CELL_PX * columns, HEADER_PX + CELL_PX * (1 + num_queries)


def _label(query: str, shares: Mapping[str, float]) -> str:
    name = "bottleneck tokens" if query == "bottleneck" else query.replace("cls_", "CLS ")
    name = name.replace("spectrogram", "audio")
    share = " · ".join(f"{_SHORT.get(m, m)} {100 * v:.0f}%" for m, v in shares.items())
    return f"{name}\n{share}"


def _show_frame(axes, frame_HxWx3: np.ndarray) -> None:
    height, width = frame_HxWx3.shape[:2]
    axes.imshow(frame_HxWx3, extent=(0, width, height, 0), interpolation="nearest")


def _show_logmel(axes, logmel_TxF: np.ndarray) -> None:
    time, mel = logmel_TxF.shape
    axes.imshow(
        logmel_TxF.T,
        origin="lower",
        cmap="gray",
        aspect="auto",
        extent=(0, time, 0, mel),
        interpolation="nearest",
    )


def _overlay(axes, grid: np.ndarray, scale_from: np.ndarray, **placement) -> None:
    """`grid` over the input, coloured from the minimum to the maximum of `scale_from` (the
    row's whole map of this modality); a map that is zero everywhere (the query does not
    reach this modality) is not drawn but said."""
    low, high = float(scale_from.min()), float(scale_from.max())
    if high <= 0.0:
        axes.text(
            0.04,
            0.06,
            "no attention",
            transform=axes.transAxes,
            fontsize=8,
            color="white",
            backgroundcolor="black",
        )
        return
    axes.imshow(
        grid,
        cmap="jet",
        alpha=0.5,
        interpolation="nearest",
        vmin=low if high > low else 0.0,
        vmax=high,
        **placement,
    )


@dataclasses.dataclass
class _Column:
    """One column of cells: where it is, its title, and how to draw its input and a map."""

    x_px: int
    width_px: int
    title: str
    show_input: Callable[[Any], None]
    show_map: Callable[[Any, Mapping[str, np.ndarray]], None]


def _columns(shown: ShownInputs) -> list[_Column]:
    columns = []
    if shown.frames is not None:
        frames = shown.frames
        ph, pw = shown.frame_patch
        for t, seconds in enumerate(np.asarray(shown.frame_times)):

            def show_map(axes, maps, t=t):
                grid_TxHxW = maps["rgb"]
                gh, gw = grid_TxHxW.shape[1:]
                _show_frame(axes, frames[t])
                _overlay(axes, grid_TxHxW[t], grid_TxHxW, extent=(0, gw * pw, gh * ph, 0))
                axes.set_xlim(0, frames.shape[2])
                axes.set_ylim(frames.shape[1], 0)

            columns.append(
                _Column(
                    LABEL_PX + t * CELL_PX,
                    CELL_PX,
                    f"{seconds:.2f} s",
                    functools.partial(_show_frame, frame_HxWx3=frames[t]),
                    show_map,
                )
            )
    if shown.logmel is not None:
        logmel_TxF = shown.logmel
        pt, pf = shown.logmel_patch

        def show_logmel_map(axes, maps):
            grid_TxF = maps["spectrogram"]
            gt, gf = grid_TxF.shape
            _show_logmel(axes, logmel_TxF)
            placement = dict(origin="lower", aspect="auto", extent=(0, gt * pt, 0, gf * pf))
            _overlay(axes, grid_TxF.T, grid_TxF, **placement)
            axes.set_xlim(0, logmel_TxF.shape[0])
            axes.set_ylim(0, logmel_TxF.shape[1])

        columns.append(
            _Column(
                LABEL_PX + len(columns) * CELL_PX,
                SPEC_CELLS * CELL_PX,
                "log-mel (time →, mel ↑)",
                functools.partial(_show_logmel, logmel_TxF=logmel_TxF),
                show_logmel_map,
            )
        )
    return columns


def draw(path: str, result, shown: ShownInputs, header: str) -> tuple[int, int]:
    """Writes the PNG of `result` (`attention.AttentionMaps`) to `path`; returns its size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    steps = 0 if shown.frames is None else len(shown.frames)
    queries = list(result.maps)
    width, height = figure_pixels(steps, shown.logmel is not None, len(queries))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.text(0.5, 1 - HEADER_PX / 2 / height, header, ha="center", va="center", fontsize=10)

    def cell(row: int, column: _Column):
        title_px = _TITLE_PX if row == 0 else 0
        top = HEADER_PX + row * CELL_PX + _PAD_PX + title_px
        size_y = CELL_PX - 2 * _PAD_PX - title_px
        rect = (
            (column.x_px + _PAD_PX) / width,
            1 - (top + size_y) / height,
            (column.width_px - 2 * _PAD_PX) / width,
            size_y / height,
        )
        axes = fig.add_axes(rect)
        axes.set_xticks([])
        axes.set_yticks([])
        return axes

    def label(row: int, text: str) -> None:
        y = 1 - (HEADER_PX + (row + 0.5) * CELL_PX) / height
        fig.text(_PAD_PX / width, y, text, ha="left", va="center", fontsize=9)

    columns = _columns(shown)
    label(0, "input")
    for column in columns:
        axes = cell(0, column)
        column.show_input(axes)
        axes.set_title(column.title, fontsize=8)
    for row, query in enumerate(queries, start=1):
        label(row, _label(query, result.shares[query]))
        for column in columns:
            column.show_map(cell(row, column), result.maps[query])
    fig.savefig(path, dpi=DPI)
    return width, height
