"""The Fine-tune tab's image-path view: the health figures are plotted and a broken path is said in words."""
from app.tabs.finetune import curves, image_path_warning

EVENTS = [
    {"step": 0, "event": "eval", "recall@10": 0.2,
     "image_path": {"zs_image_r10": 0.2, "connector_probe_r10": 0.18, "nv_r10": 0.09, "image_only_r10": 0.1,
                    "connector_variation": 0.67, "chance_loss": 3.434}},
    {"step": 1, "loss": 2.8, "visual_loss": 3.39},
    {"step": 2, "loss": 2.6, "visual_loss": 3.43},
    {"step": 2, "event": "eval", "recall@10": 0.3, "warning": "The image path looks broken: <b>x</b>",
     "image_path": {"zs_image_r10": 0.2, "connector_probe_r10": 0.02, "nv_r10": 0.01, "image_only_r10": 0.01,
                    "connector_variation": 0.03, "chance_loss": 3.434}},
]


def test_curves_plot_every_image_path_figure_and_the_chance_loss():
    names = {trace.name for trace in curves(EVENTS).data}
    assert {"frozen tower alone (zs-image)", "connector probe", "image side n_v (mICL)", "note vector, image only",
            "connector variation", "image-side loss (n_v)", "chance loss ln(2B-1)"} <= names
    probe = next(t for t in curves(EVENTS).data if t.name == "connector probe")
    assert list(probe.y) == [0.18, 0.02]


def test_the_last_evaluation_warning_is_shown_escaped():
    html = image_path_warning(EVENTS)
    assert "looks broken" in html and "<b>" not in html and "&lt;b&gt;" in html
    assert image_path_warning(EVENTS[:3]) == ""
