"""HTML and small formatting helpers shared by the tabs (no state, no core calls).

Every text a user could have written (names, titles, file contents quoted in an error message, another
user's job message) reaches the page through one of these: `esc` for HTML outputs, `md` for Markdown
outputs, and the toast helpers, because Gradio renders toast messages as HTML."""
from __future__ import annotations

import base64
import html
import io
import logging
import re
from functools import lru_cache

from PIL import Image

from core.data.images import decode_image

log = logging.getLogger(__name__)

THUMB = 112


@lru_cache(maxsize=4096)
def _thumb_cached(path: str, size: int, mtime: float) -> str:
    image = decode_image(path, draft_side=size)  # capped: a thumbnail never decodes a bomb
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumb(image, size: int = THUMB) -> str | None:
    """A data URL for a small JPEG of a path or PIL image; None when there is no readable image.

    Inline data URLs keep cards self-contained: no file-serving rules, and they survive gradio_client."""
    if image is None:
        return None
    try:
        if isinstance(image, Image.Image):
            copy = decode_image(image)
            copy.thumbnail((size, size))
            buffer = io.BytesIO()
            copy.save(buffer, format="JPEG", quality=80)
            return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        import os
        return _thumb_cached(str(image), size, os.path.getmtime(image))
    except Exception:  # a broken or refused image shows as a card without a picture; the log says why
        log.warning("no thumbnail for %s", image if isinstance(image, str) else type(image).__name__, exc_info=True)
        return None


def esc(text) -> str:
    return html.escape(str(text if text is not None else ""))


# What makes Markdown markup (emphasis, code, links, images, tables, headings), plus ':', '.' and '@' so that
# "http://x", "www.x" or "a@b.x" is never turned into a link. ('-' and '+' only make lists: left as they are.)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~:.@])")


def md(text) -> str:
    """User text for a Markdown output: shown literally (no link, image, emphasis or HTML element)."""
    text = str(text if text is not None else "")
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", text), quote=False)


def info_toast(text, **kwargs) -> None:
    import gradio as gr

    gr.Info(esc(text), **kwargs)


def warning_toast(text, **kwargs) -> None:
    import gradio as gr

    gr.Warning(esc(text), **kwargs)


def error_toast(text, **kwargs):
    """A gr.Error to raise, its message escaped."""
    import gradio as gr

    return gr.Error(esc(text), **kwargs)


def badge(text: str, kind: str = "") -> str:
    return f'<span class="wb-badge {kind}">{esc(text)}</span>'


def note_card(note, *, rank: int | None = None, score: float | None = None, badges: list[str] = (),
              extra_class: str = "", size: int = THUMB) -> str:
    """One note as a card: thumbnail, rank and score, title, category, badges."""
    src = thumb(getattr(note, "image", None), size)
    image = (f'<img src="{src}" alt="" loading="lazy">' if src else '<div class="wb-noimg">no image</div>')
    head = []
    if rank is not None:
        head.append(f'<span class="wb-rank">#{rank}</span>')
    if score is not None:
        head.append(f'<span class="wb-score" title="inner product of the normalised vectors">{score:.3f}</span>')
    title = getattr(note, "title", "") or "(untitled)"
    category = getattr(note, "category", "") or ""
    note_id = getattr(note, "note_id", "")
    return (f'<div class="wb-card {extra_class}" data-note-id="{esc(note_id)}" title="{esc(note_id)}">'
            f'<div class="wb-thumb">{image}</div>'
            f'<div class="wb-meta"><div class="wb-head">{"".join(head)}</div>'
            f'<div class="wb-title">{esc(title)}</div>'
            f'<div class="wb-cat">{esc(category)}</div>'
            f'<div class="wb-badges">{"".join(badges)}</div></div></div>')


def query_card(note, label: str = "Query") -> str:
    content = getattr(note, "content", "") or ""
    topics = getattr(note, "topics", None) or []
    src = thumb(getattr(note, "image", None), 160)
    image = f'<img src="{src}" alt="">' if src else '<div class="wb-noimg">no image</div>'
    text = esc(content[:240]) + ("…" if len(content) > 240 else "")
    tags = " ".join(badge("#" + t, "topic") for t in topics[:8])
    return (f'<div class="wb-query"><div class="wb-thumb big">{image}</div><div class="wb-meta">'
            f'<div class="wb-label">{esc(label)}</div><div class="wb-title">{esc(note.title or "(untitled)")}</div>'
            f'<div class="wb-cat">{esc(getattr(note, "category", "") or "no category")}</div>'
            f'<div class="wb-content">{text or "<i>no text</i>"}</div><div>{tags}</div></div></div>')


def grid(cards: list[str], cls: str = "wb-grid") -> str:
    return f'<div class="{cls}">{"".join(cards)}</div>'


def notice(text: str, kind: str = "info") -> str:
    """A coloured one-line box for HTML outputs (Markdown outputs use plain text with an icon)."""
    return f'<div class="wb-notice {kind}">{esc(text)}</div>'


def pct(x) -> str:
    try:
        return f"{100 * float(x):.1f}%"
    except (TypeError, ValueError):
        return "–"


def note_choice(note) -> tuple[str, str]:
    title = (note.title or "(untitled)")[:60]
    category = note.category.split("/")[-1] if note.category else ""
    return (f"{title} — {category} [{note.note_id}]" if category else f"{title} [{note.note_id}]", note.note_id)
