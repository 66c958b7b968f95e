"""Progress in a log file is whole lines (no carriage returns), a few seconds apart; on a terminal it is tqdm."""
from __future__ import annotations

import io

import pytest

from core.progress import PlainProgress, ProgressCallback, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_stream_gets_plain_lines_without_carriage_returns(monkeypatch):
    monkeypatch.delenv("NOTELLM2_PROGRESS", raising=False)
    stream = io.StringIO()
    bar = progress_bar(total=4907, desc="openclipart", unit="note", file=stream, interval=0)
    assert isinstance(bar, PlainProgress)
    for _ in range(3):
        bar.update(400)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4  # the first line and one per update (interval 0); close repeats nothing
    assert lines[0].startswith("openclipart: 0/4,907 notes (0%)")
    assert lines[-1].startswith("openclipart: 1,200/4,907 notes (24%)")
    assert text.endswith("\n")


def test_plain_lines_wait_for_the_interval_and_show_the_rate():
    clock, stream = FakeClock(), io.StringIO()
    bar = PlainProgress(total=1000, desc="import", unit="note", file=stream, interval=5, clock=clock)
    for _ in range(40):  # 40 updates over 4 s: no line before the interval has passed
        clock.now += 0.1
        bar.update(10)
    assert len(stream.getvalue().splitlines()) == 1
    clock.now += 1.0  # 5 s after the first line
    bar.update(100)
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "import: 500/1,000 notes (50%), 100 note/s"
    bar.set_postfix(loss="0.1234")
    bar.update(1)  # within the interval: no line until close
    bar.close()
    assert stream.getvalue().splitlines()[-1].endswith(", loss=0.1234")
    bar.close()  # closing twice writes nothing more
    assert len(stream.getvalue().splitlines()) == 3


def test_close_does_not_repeat_the_last_line():
    stream = io.StringIO()
    bar = PlainProgress(total=2, desc="x", file=stream, interval=0)
    bar.update(2)
    bar.close()
    assert len(stream.getvalue().splitlines()) == 2


def test_terminal_stream_gets_tqdm(monkeypatch):
    monkeypatch.delenv("NOTELLM2_PROGRESS", raising=False)
    from tqdm import tqdm

    bar = progress_bar(total=10, desc="t", file=TerminalStream())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("NOTELLM2_PROGRESS", "plain")
    assert isinstance(progress_bar(total=10, file=TerminalStream(), disable=True), PlainProgress)


def test_callback_draws_one_bar_per_stage_and_no_second_bar_for_a_repeated_end():
    stream = io.StringIO()
    callback = ProgressCallback(desc="encode", unit="note", file=stream, interval=0)
    callback(0, 1, "writing")  # under min_total: no bar
    for done in range(0, 5):
        callback(done, 4, "checking images")
    callback(4, 4, "checking images")  # the store reports the end once more
    callback.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert all(line.startswith("encode: checking images: ") for line in lines)
    assert sum(line.startswith("encode: checking images: 4/4") for line in lines) == 1


@pytest.mark.parametrize("total", [None, 0])
def test_unknown_total_prints_a_count(total):
    stream = io.StringIO()
    bar = PlainProgress(total=total, desc="rows", unit="row", file=stream, interval=0)
    bar.update(3)
    assert stream.getvalue().splitlines()[-1].startswith("rows: 3 rows")


def test_a_training_run_logged_to_a_file_writes_lines_not_carriage_returns(tmp_path):
    """`python -m core train` with stderr in a file (a job's log): progress lines end in newlines, carry the
    loss, and there is no carriage return; a tqdm bar there would be one line of redraws."""
    import os
    import subprocess
    import sys

    from core.workspace import REPO_ROOT
    from tests.unit.engine_fixtures import import_learnable

    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    log_path = tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k != "NOTELLM2_PROGRESS"}
    with open(log_path, "w") as log_file:
        subprocess.run([sys.executable, "-m", "core", "train", "--workspace", str(root), "--dataset", "toy",
                        "--variant", "text", "--preset", "tiny", "--steps", "3", "--run", "logged",
                        "--test-fraction", "0.3"], cwd=REPO_ROOT, env={**env, "PYTHONPATH": str(REPO_ROOT)},
                       stdout=subprocess.DEVNULL, stderr=log_file, check=True, timeout=300)
    raw = log_path.read_bytes()  # read_text would turn carriage returns into newlines
    assert b"\r" not in raw
    text = raw.decode()
    progress = [line for line in text.splitlines() if line.startswith("train logged")]
    assert progress and "3/3" in progress[-1] and "loss=" in progress[-1]
