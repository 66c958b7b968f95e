"""The note and pair records every part of the workbench passes around, and the text rules for topics
(hashtags in content, a topics cell) that the upload reader, the prompts and `Note.from_dict` share."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Topics pulled out of `#tag#` in content, as the reference does: at most 10, each at most 16 characters.
MAX_TOPICS = 10
MAX_TOPIC_CHARS = 16
HASHTAG = re.compile(r"#([^\s#](?:[^#\n]{0,%d}[^\s#])?)#" % (MAX_TOPIC_CHARS - 2))
# Xiaohongshu writes tags as `#旅行[话题]#`; the bracket is markup, not part of the topic.
TAG_MARKUP = re.compile(r"\[[^\]]{1,8}\]$")


def extract_topics(content: str, topics: list[str] | None = None) -> tuple[str, list[str]]:
    """Pull `#tag#` hashtags out of content into topics (after any given topics, up to MAX_TOPICS in all).

    Tags that fit are removed from the text, since the prompt shows topics in their own field; tags past
    the tenth are left in the text untouched so nothing the user wrote disappears.
    """
    topics = list(topics or [])
    seen = set(topics)

    def take(match: re.Match) -> str:
        tag = TAG_MARKUP.sub("", match.group(1)).strip()
        if not tag:
            return match.group(0)
        if tag in seen:
            return " "
        if len(topics) >= MAX_TOPICS:
            return match.group(0)
        topics.append(tag)
        seen.add(tag)
        return " "

    text = HASHTAG.sub(take, content)
    if text != content:
        text = re.sub(r"[ \t]{2,}", " ", text).strip()
    return text, topics


def split_topics(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(t).strip() for t in value if str(t).strip()]
    return [t for t in (p.strip() for p in re.split(r"[#,;]", str(value))) if t]


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
        return cls(
            note_id=str(row.get("note_id", "")),
            title=row.get("title") or "",
            content=row.get("content") or "",
            topics=split_topics(row.get("topics")),
            image=row.get("image"),
            category=row.get("category") or "",
        )
