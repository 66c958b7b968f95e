"""Imported images wait outside images/ until the import commits; what a killed import leaves behind is
removed when a process next opens the workspace; dataset names are matched whole."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.data import store as store_module
from core.data.problems import UploadError
from core.data.store import Store, _IncomingImages
from core.errors import WorkbenchError

try:
    from data_fixtures import good_upload, store_state
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import good_upload, store_state

REPO = Path(__file__).resolve().parents[2]


def fresh_store(root) -> Store:
    """A Store as a newly started process opens it (its start-up clean-up runs)."""
    store_module._tidied.discard(str(Path(root).resolve()))
    return Store(root)


def test_a_killed_import_leaves_nothing_in_images_and_start_up_removes_its_leftovers(tmp_path):
    root = tmp_path / "ws"
    store = Store(root)
    notes, pairs, images = good_upload(tmp_path / "existing", n=4)
    store.import_dataset("existing", notes, pairs, images)
    before = store_state(store)
    notes, pairs, images = good_upload(tmp_path / "up", n=12)
    # Another process imports and is killed (SIGKILL: no clean-up of any kind) while checking images.
    script = textwrap.dedent(f"""
        import os, signal
        from core.data.store import Store
        def progress(done, total, message):
            if message == "checking images" and done == 8:
                os.kill(os.getpid(), signal.SIGKILL)
        Store({str(root)!r}).import_dataset("doomed", {str(notes)!r}, {str(pairs)!r}, {str(images)!r},
                                            progress=progress)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -9
    leftovers = list((root / "incoming").iterdir())
    assert len(leftovers) == 1 and len(list(leftovers[0].iterdir())) >= 4  # its new images waited there
    assert list(root.glob(".import-*.db"))  # and its scratch database of rows
    assert store_state(store) == before  # ... and never reached images/

    (root / "images" / ("0" * 64 + ".png")).write_bytes(b"left by a kill between move and commit")
    store = fresh_store(root)
    assert not list((root / "incoming").iterdir()) and not list(root.glob(".import-*"))
    assert store_state(store) == before  # the unreferenced file is gone, every referenced one kept
    assert all(n.image and Path(n.image).exists() for n in store.notes("existing"))


def test_start_up_keeps_the_incoming_folder_of_a_live_import(tmp_path):
    root = tmp_path / "ws"
    Store(root)
    live = root / "incoming" / f"{os.getpid()}-abcdef12"
    live.mkdir(parents=True)
    (live / "x.png").write_bytes(b"...")
    dead = root / "incoming" / "999999999-abcdef12"
    dead.mkdir()
    fresh_store(root)
    assert live.exists() and not dead.exists()


def test_start_up_removes_scratch_databases_of_dead_imports_only(tmp_path):
    root = tmp_path / "ws"
    Store(root)
    live = root / f".import-{os.getpid()}-abc.db"
    dead = root / ".import-999999999-abc.db"
    dead_journal = root / ".import-999999999-abc.db-journal"
    for path in (live, dead, dead_journal):
        path.write_bytes(b"")
    fresh_store(root)
    assert live.exists() and not dead.exists() and not dead_journal.exists()


def test_a_successful_import_moves_its_images_in_and_leaves_no_incoming_folder(tmp_path):
    store = Store(tmp_path / "ws")
    notes, pairs, images = good_upload(tmp_path / "up", n=6)
    report = store.import_dataset("new", notes, pairs, images)
    assert report.images_new == 6
    assert all(Path(n.image).exists() for n in store.notes("new"))
    assert not any((tmp_path / "ws" / "incoming").iterdir())


def test_a_failure_after_the_move_takes_the_moved_files_out_again(tmp_path, monkeypatch):
    store = Store(tmp_path / "ws")
    before = store_state(store)
    notes, pairs, images = good_upload(tmp_path / "up", n=6)
    move_in = _IncomingImages.move_in

    def move_in_then_fail(self):
        move_in(self)
        assert len(self.moved) == 6 and all((self.images_dir / name).exists() for name in self.moved)
        raise OSError("disk full")

    monkeypatch.setattr(_IncomingImages, "move_in", move_in_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.import_dataset("new", notes, pairs, images)
    assert store_state(store) == before
    assert not any((tmp_path / "ws" / "incoming").iterdir())


def test_a_refused_import_writes_no_image_anywhere(tmp_path):
    store = Store(tmp_path / "ws")
    before = store_state(store)
    notes, pairs, images = good_upload(tmp_path / "up", n=6)
    (images / "img5.png").write_bytes(b"broken")
    with pytest.raises(UploadError):
        store.import_dataset("new", notes, pairs, images)
    assert store_state(store) == before
    assert not (tmp_path / "ws" / "incoming").exists() or not any((tmp_path / "ws" / "incoming").iterdir())


@pytest.mark.parametrize("name", ["evil\n", "-h", "--resume", "../x", "/etc", ".hidden", "a/b", ""])
def test_dataset_names_are_matched_whole(tmp_path, name):
    store = Store(tmp_path / "ws")
    notes, pairs, images = good_upload(tmp_path / "up", n=4)
    with pytest.raises(WorkbenchError, match="bad dataset name"):
        store.import_dataset(name, notes, pairs, images)


def test_opening_a_store_while_another_process_holds_the_write_lock_does_not_fail(tmp_path, monkeypatch):
    import sqlite3

    root = tmp_path / "ws"
    Store(root)

    def locked(self):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Store, "remove_orphans", locked)
    store = fresh_store(root)  # opens anyway; the clean-up is tried again by the next Store
    assert str(store.workspace.root) not in store_module._tidied
