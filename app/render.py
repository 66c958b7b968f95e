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

from core.data.images import decode_image, trim_margins

log = logging.getLogger(__name__)

THUMB = 112


@lru_cache(maxsize=4096)
def _thumb_cached(path: str, size: int, mtime: float) -> str:
    # capped: a thumbnail never decodes a bomb; twice the side, so the drawing keeps detail once trimmed
    image = trim_margins(decode_image(path, draft_side=2 * size))
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
            copy = trim_margins(decode_image(image))
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


MARK_LABELS = {"ok": "done", "error": "error", "warn": "warning", "info": "note"}


def mark(kind: str = "ok") -> str:
    """A small status mark drawn in CSS (assets/workbench.css, .wb-mark): no emoji, so it looks the same
    whatever fonts the browser has. kind: ok | error | warn | info."""
    kind = kind if kind in MARK_LABELS else "info"
    return f'<span class="wb-mark {kind}" role="img" aria-label="{MARK_LABELS[kind]}"></span>'


def related_badge() -> str:
    """The badge of a labelled related note (a pair in the dataset)."""
    return f'<span class="wb-badge related" title="a labelled related pair">{mark("ok")}related</span>'


def highlight(text, words) -> str:
    """`text` escaped, with every whole-word occurrence of `words` (any case) wrapped in <mark>."""
    text = str(text if text is not None else "")
    words = sorted({w for w in (words or ()) if w}, key=len, reverse=True)
    if not words:
        return esc(text)
    pattern = re.compile(r"(?<![^\W_])(" + "|".join(re.escape(w) for w in words) + r")(?![^\W_])", re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(esc(text[last:match.start()]))
        out.append(f"<mark>{esc(match.group(0))}</mark>")
        last = match.end()
    out.append(esc(text[last:]))
    return "".join(out)


def similarity(label: str, value: float | None, missing: str, kind: str) -> str:
    """One row of a card's explanation: a label, a bar for a cosine in [-1, 1] and its value, or why none."""
    if value is None:
        return (f'<div class="wb-sim {kind} none"><span class="wb-sim-label">{esc(label)}</span>'
                f'<span class="wb-sim-none">{esc(missing)}</span></div>')
    width = max(0.0, min(1.0, float(value))) * 100
    return (f'<div class="wb-sim {kind}" title="cosine of the {esc(label)} vectors"><span class="wb-sim-label">'
            f'{esc(label)}</span><span class="wb-sim-bar"><span style="width:{width:.0f}%"></span></span>'
            f'<span class="wb-sim-value">{float(value):.3f}</span></div>')


def explanation(why, query_has_text: bool = True, query_has_image: bool = True,
                reads_text: bool = True, reads_image: bool = True) -> str:
    """A card's "why this neighbour": similarity under text only and image only, the gate's image share,
    the shared topics and words (all escaped)."""
    def missing(present_in_query, reads, what):
        if not reads:
            return f"variant ignores {what}"
        return f"query has no {what}" if not present_in_query else f"no {what}"

    rows = [similarity("text only", why.text_score, missing(query_has_text, reads_text, "text"), "text"),
            similarity("image only", why.image_score, missing(query_has_image, reads_image, "image"), "image")]
    if why.image_share is not None:
        rows.append(f'<div class="wb-gate" title="late-fusion gate: share of the vector taken from the image '
                    f'feature">gate: {100 * why.image_share:.0f}% image</div>')
    shared = [badge("#" + topic, "topic shared") for topic in why.shared_topics[:6]]
    if why.shared_words:
        words = ", ".join(esc(word) for word in why.shared_words[:8])
        more = f" +{len(why.shared_words) - 8}" if len(why.shared_words) > 8 else ""
        shared.append(f'<div class="wb-shared-words">shares: <mark>{words}</mark>{more}</div>')
    return (f'<div class="wb-why"><div class="wb-why-label">Why this neighbour</div>{"".join(rows)}'
            f'{"".join(shared)}</div>')


def note_card(note, *, rank: int | None = None, score: float | None = None, badges: list[str] = (),
              extra_class: str = "", size: int = THUMB, title_words=(), why: str = "",
              clickable: bool = False) -> str:
    """One note as a card: thumbnail, rank and score, title (its `title_words` marked), category, badges,
    then an explanation block (`why`, already HTML). A clickable card is a button to search from its note."""
    src = thumb(getattr(note, "image", None), size)
    image = (f'<img src="{src}" alt="" loading="lazy">' if src else '<div class="wb-noimg">no image</div>')
    head = []
    if rank is not None:
        head.append(f'<span class="wb-rank">#{rank}</span>')
    if score is not None:
        head.append(f'<span class="wb-score" title="score: inner product of the normalised vectors">'
                    f'{score:.3f}</span>')
    title = getattr(note, "title", "") or "(untitled)"
    category = getattr(note, "category", "") or ""
    note_id = getattr(note, "note_id", "")
    action = (f' role="button" tabindex="0" title="Search from this note ({esc(note_id)})"' if clickable
              else f' title="{esc(note_id)}"')
    classes = " ".join(c for c in ("wb-card", extra_class, "wb-clickable" if clickable else "") if c)
    return (f'<div class="{classes}" data-note-id="{esc(note_id)}"{action}>'
            f'<div class="wb-thumb">{image}</div>'
            f'<div class="wb-meta"><div class="wb-head">{" ".join(head)}</div>'
            f'<div class="wb-title">{highlight(title, title_words)}</div>'
            f'<div class="wb-cat">{esc(category)}</div>'
            f'<div class="wb-badges">{"".join(badges)}</div>{why}</div></div>')


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
