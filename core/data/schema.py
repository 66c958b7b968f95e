"""The note and pair records every part of the workbench passes around."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Note:
    """One item to embed. `image` is whatever the loader resolved: a PIL image, a file path, or None.

    A note without an image is encoded with a zero image (as the reference does) and flagged through
    `has_image` on the model's batch, so analysis can tell real images from stand-ins.
    """

    note_id: str
    title: str = ""
    content: str = ""
    topics: list[str] = field(default_factory=list)
    image: Any = None
    category: str = ""

    @classmethod
    def from_dict(cls, row: dict) -> "Note":
        from core.data.readers import split_topics  # the upload reader's rule for a topics cell

        return cls(
            note_id=str(row.get("note_id", "")),
            title=row.get("title") or "",
            content=row.get("content") or "",
            topics=split_topics(row.get("topics")),
            image=row.get("image"),
            category=row.get("category") or "",
        )
