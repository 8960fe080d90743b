"""The selection / report split of the val slices: every variant and checkpoint is selected on the
first ``SELECTION_IMAGES`` val slices (what ``train --val-max-images 600`` validates on) and reported
on the others, which no choice has seen (``evaluate --subset select|report``)."""

from __future__ import annotations

SELECTION_IMAGES = 600
SUBSETS = ("all", "select", "report")
SUBSET_NOTES = {
    "all": "all val slices (the selection slices included)",
    "select": f"the first {SELECTION_IMAGES} val slices (used for selection)",
    "report": f"val slices {SELECTION_IMAGES + 1} onwards (val, not used for selection)",
}


def subset_indices(n: int, subset: str, max_images: int | None = None) -> range:
    """Item indices of ``subset`` among ``n`` items, at most ``max_images`` of them."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
    cut = min(SELECTION_IMAGES, n)
    r = {"all": range(n), "select": range(cut), "report": range(cut, n)}[subset]
    if not len(r):
        raise ValueError(
            f"subset {subset!r} is empty: the split has {n} images (selection: the first {SELECTION_IMAGES})"
        )
    return r if max_images is None else r[: int(max_images)]


class ItemSubset:
    """A view of a ``SliceDataset`` (``raw`` / ``len`` / ``rater_names``) restricted to some indices."""

    def __init__(self, items, indices: range):
        self.items, self.indices = items, indices
        self.rater_names = list(items.rater_names)

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int):
        return self.items.raw(self.indices[i])
