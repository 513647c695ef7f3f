"""What an initialisation did to each parameter: loaded, resized, inflated or fresh."""

from __future__ import annotations

import dataclasses

CATEGORIES = ("loaded", "resized", "inflated", "fresh")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model parameter: its '/'-joined `path`, `shape`, `category`, the checkpoint key it
    came from (`source`, '' when fresh) and a `note` saying what was done."""

    path: str
    shape: tuple[int, ...]
    category: str
    source: str = ""
    note: str = ""


@dataclasses.dataclass
class InitReport:
    """Every parameter of the model with how it was initialised, plus unused checkpoint keys."""

    checkpoint_path: str
    checkpoint_format: str
    entries: list[Entry] = dataclasses.field(default_factory=list)
    unused_checkpoint_keys: list[str] = dataclasses.field(default_factory=list)

    def add(self, path: str, shape, category: str, source: str = "", note: str = "") -> None:
        if category not in CATEGORIES:
            raise ValueError(f"report category {category!r}; allowed: {CATEGORIES}")
        self.entries.append(Entry(path, tuple(int(s) for s in shape), category, source, note))

    def category_of(self, path: str) -> str:
        """The category of parameter `path` (KeyError naming it when absent)."""
        for entry in self.entries:
            if entry.path == path:
                return entry.category
        raise KeyError(f"parameter {path!r} is not in the report")

    def by_category(self) -> dict[str, list[str]]:
        """`{category: [paths]}` for all four categories (empty lists included)."""
        grouped: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        for entry in self.entries:
            grouped[entry.category].append(entry.path)
        return grouped

    def summary(self) -> str:
        """One line: counts per category and of unused checkpoint keys."""
        counts = ", ".join(f"{c} {len(p)}" for c, p in self.by_category().items())
        return (
            f"init from {self.checkpoint_path} ({self.checkpoint_format}): {counts}; "
            f"unused checkpoint keys {len(self.unused_checkpoint_keys)}"
        )

    def table(self) -> str:
        """A fixed-width table: parameter, shape, category, source key, note; then unused keys."""
        header = ("parameter", "shape", "category", "source", "note")
        rows = [
            (e.path, "x".join(map(str, e.shape)) or "scalar", e.category, e.source, e.note)
            for e in self.entries
        ]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(4)]
        lines = [self.summary()]
        for row in [header] + rows:
            lines.append(
                "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
            )
        if self.unused_checkpoint_keys:
            lines.append("unused checkpoint keys: " + ", ".join(self.unused_checkpoint_keys))
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.table()
