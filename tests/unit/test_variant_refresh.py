"""The variant pickers' refresh: it is queued with the value of its moment and can land after the user chose
again, so it must never send back a choice that still exists (that would undo the newer one)."""
from types import SimpleNamespace

from app.tabs.common import refresh_variants


class FakeBackend:
    def __init__(self, names):
        self.names = names

    def variant_choices(self, dataset, trained_only=False):
        return [(f"label {n}", n) for n in self.names if not (trained_only and n.startswith("zs-"))]

    def variants(self, dataset):
        return [SimpleNamespace(name=n, variant="micl+late" if n == "run-b" else n) for n in self.names]


NAMES = ["run-a", "run-b", "zs-text", "zs-concat"]


def test_a_choice_that_still_exists_is_left_to_the_page():
    backend = FakeBackend(NAMES)
    update = refresh_variants(backend, "toy", "run-a")
    assert "value" not in update and [v for _, v in update["choices"]] == NAMES
    update = refresh_variants(backend, "toy", ["run-a", "zs-text"], multiselect=True)
    assert "value" not in update


def test_a_choice_that_is_gone_is_replaced_by_the_default():
    backend = FakeBackend(NAMES)
    assert refresh_variants(backend, "toy", "deleted-run")["value"] == "run-b"  # NoteLLM-2 first
    assert refresh_variants(backend, "toy", None)["value"] == "run-b"
    assert refresh_variants(backend, "toy", ["deleted-run", "run-a"], multiselect=True)["value"] == ["run-a"]
    assert refresh_variants(backend, "toy", [], multiselect=True, default_count=2)["value"] == ["run-b", "run-a"]
    assert refresh_variants(FakeBackend([]), "toy", "run-a")["value"] is None
