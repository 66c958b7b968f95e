"""User text reaches the page escaped: HTML outputs, Markdown outputs and toasts (which Gradio renders as HTML)."""
import pytest

gr = pytest.importorskip("gradio")

from app import render  # noqa: E402

HOSTILE = '<img src=x onerror=alert(1)> [click](http://evil.example) ![i](http://evil.example/x.png) www.evil.example **b**'


def test_html_outputs_escape_user_text():
    assert "<img" not in render.notice(HOSTILE, "error") and "&lt;img" in render.notice(HOSTILE, "error")
    assert "<img src=x" not in render.badge(HOSTILE)


def test_markdown_outputs_show_user_text_literally():
    text = render.md(HOSTILE)
    assert "<img" not in text and "&lt;img" in text
    assert "[click](" not in text and "![i](" not in text and "**b**" not in text
    assert "http://" not in text and "www.evil" not in text  # no autolink either
    assert render.md("to-delete") == "to-delete" and render.md(None) == ""


def test_toasts_escape_user_text(monkeypatch):
    shown = []
    monkeypatch.setattr(gr, "Info", lambda message, **kw: shown.append(message))
    monkeypatch.setattr(gr, "Warning", lambda message, **kw: shown.append(message))
    render.info_toast(HOSTILE)
    render.warning_toast(HOSTILE)
    error = render.error_toast(HOSTILE)
    assert isinstance(error, gr.Error)
    for message in shown + [error.message]:
        assert "<img" not in message and "&lt;img" in message
