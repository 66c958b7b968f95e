"""The Fine-tune tab's training log without a server: a box of one height (a Textbox grew from 8 to 14 lines
as lines arrived and then stayed at its top) that follows new lines, with the worker's text escaped (it
echoes run names and paths a user typed). tests/browser/test_data_bridges_and_log.py watches it scroll."""
import pytest

gr = pytest.importorskip("gradio")

from app.tabs import finetune  # noqa: E402


def test_the_log_is_escaped_and_says_when_it_is_empty():
    html = finetune.log_html("step 1 run <img src=x onerror=alert(1)> & done")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt; &amp; done" in html
    assert "No log yet" in finetune.log_html("") and "No log yet" in finetune.log_html(None)


def test_the_log_box_has_one_height_and_follows_new_lines():
    with gr.Blocks():
        box = finetune.log_box()
    assert isinstance(box, gr.HTML) and box.elem_id == "ft-log"
    assert box.min_height == box.max_height == finetune.LOG_HEIGHT_PX
    # the text block fills the box: with min/max height alone the box shrank to its text at each update
    assert f"min-height: {finetune.LOG_HEIGHT_PX - 26}px" in box.css_template
    assert box.autoscroll is True
