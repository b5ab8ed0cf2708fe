"""The label map: contiguous class ids <-> names <-> the data set's own category ids.

tfvision numbers classes contiguously: 0 is background, and the k-th category in ascending data-set id
order gets id k (1..K), as torchvision and the TF Object Detection API count. The map travels with a
model (it is written next to checkpoints and into exports as an asset) so that predictions can be named
and translated back to the data set's ids.
"""

from __future__ import annotations

import dataclasses
import json
import os


BACKGROUND = "background"


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Class names and data-set ids, indexed by contiguous id.

    Args:
        names: names of the K object classes, in contiguous-id order (id 1 first). Background (id 0) is
            implicit.
        source_ids: the data set's own category id of each class, same order; defaults to 1..K.
    """

    names: tuple[str, ...]
    source_ids: tuple[int, ...] = ()

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        source_ids = tuple(int(i) for i in self.source_ids) or tuple(range(1, len(names) + 1))
        if len(source_ids) != len(names):
            raise ValueError(
                f"LabelMap has {len(names)} names but {len(source_ids)} source ids; give one id per name."
            )
        if len(set(source_ids)) != len(source_ids):
            raise ValueError(f"LabelMap source ids must be unique, got {list(source_ids)}.")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "source_ids", source_ids)

    @classmethod
    def from_categories(cls, categories) -> "LabelMap":
        """Builds the map from COCO `categories` entries (dicts with `id` and `name`), sorted by id."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(names=tuple(c["name"] for c in cats), source_ids=tuple(int(c["id"]) for c in cats))

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background not counted)."""
        return len(self.names)

    def name(self, class_id: int) -> str:
        """The name of contiguous id `class_id` (0 is background)."""
        if class_id == 0:
            return BACKGROUND
        if not 1 <= class_id <= self.num_classes:
            raise ValueError(
                f"class id {class_id} is beyond the label map (ids 1..{self.num_classes}); "
                "check that the model and the label map belong to the same data set."
            )
        return self.names[class_id - 1]

    def to_contiguous(self) -> dict[int, int]:
        """Data-set category id -> contiguous id."""
        return {source: k for k, source in enumerate(self.source_ids, start=1)}

    def to_source(self) -> dict[int, int]:
        """Contiguous id -> data-set category id."""
        return {k: source for k, source in enumerate(self.source_ids, start=1)}

    def to_json(self) -> str:
        return json.dumps({"names": list(self.names), "source_ids": list(self.source_ids)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LabelMap":
        data = json.loads(text)
        return cls(names=tuple(data["names"]), source_ids=tuple(data.get("source_ids", ())))

    def save(self, path: str) -> None:
        """Writes the map as JSON, atomically (a temporary file renamed into place)."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "LabelMap":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def to_text(self) -> str:
        """One name per line, line k+1 for id k, background first: the serving asset format."""
        return "\n".join((BACKGROUND,) + self.names) + "\n"
