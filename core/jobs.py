"""Background jobs: training and encoding run in worker processes (`python -m core train|encode ... --job ID`),
never in the UI's process.

State lives in the workspace's sqlite (`jobs` table of workbench.db), so any process (a reloaded page, a
new server) re-attaches by reading it. The worker reports its own progress and end state; the spawner only
creates the row and records the pid. Reading a job checks that a "queued"/"running" job's process still
exists (same pid *and* same start time, so a reused pid is not mistaken for it, and a zombie counts as
gone): a job whose process is gone without reporting is marked failed (or cancelled, if a cancel was asked
for) with the reason, so nothing stays "running" forever.

Cancel sends SIGTERM; the trainer catches it, finishes the current step, writes a checkpoint (resumable
with `--resume`) and reports "cancelled".

Ownership: one worker per run. `start_job` claims the run inside one sqlite write transaction (BEGIN
IMMEDIATE, so two processes or threads cannot both pass the check): a run that a queued or running job
holds is refused, and so is a new job once `max_jobs()` are active. The claim is the job's row itself, so
it ends when the job does, and a worker that died without reporting releases it at the next check.
Workers this process started are waited for by a thread each, so a finished one never lingers as a zombie.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from core.errors import WorkbenchError
from core.workspace import REPO_ROOT, Workspace

STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
# Training and encoding workers each load a model and use every core they are given: on the 2-core machines
# this is developed on, more than two at once only slows all of them down. NOTELLM2_MAX_JOBS raises it.
DEFAULT_MAX_JOBS = 2
_children: dict[int, subprocess.Popen] = {}  # workers this process started (a waiter thread reaps each)


QUEUED_GRACE_S = 120  # a claim whose worker never started (its spawner died) stops holding the run after this


def _age_s(row: dict) -> float:
    """Seconds since the row was created; 0 when it has no readable time (kept, as before claims expired)."""
    try:
        return time.time() - time.mktime(time.strptime(row.get("created_at") or "", "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return 0.0


def max_jobs() -> int:
    """How many jobs may be queued or running at once in a workspace (NOTELLM2_MAX_JOBS, default 2)."""
    try:
        return max(1, int(os.environ.get("NOTELLM2_MAX_JOBS", DEFAULT_MAX_JOBS)))
    except ValueError:
        return DEFAULT_MAX_JOBS


def _workspace(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)


@contextmanager
def _db(workspace: Workspace):
    conn = sqlite3.connect(workspace.db_path, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        db = sqlite_utils.Database(conn)
        db["jobs"].create({"job_id": str, "kind": str, "run": str, "dataset": str, "state": str, "step": int,
                           "total": int, "message": str, "pid": int, "pid_start": str, "log_path": str,
                           "argv": str, "cancel_requested": int, "created_at": str, "updated_at": str},
                          pk="job_id", if_not_exists=True)
        yield db
    finally:
        conn.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _alive(row: dict) -> bool:
    pid = row.get("pid")
    if not pid:  # claimed, worker not started yet: only for as long as starting one can take
        return row["state"] == "queued" and _age_s(row) < QUEUED_GRACE_S
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    if not Path("/proc").exists():  # not Linux: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    start = process_start_time(pid)
    return start is not None and (not row.get("pid_start") or start == row["pid_start"])


def _settle(row: dict) -> tuple[str, str]:
    """The end state and message of an active job whose worker is gone without reporting."""
    if row.get("cancel_requested"):
        return "cancelled", "cancelled (the worker stopped before it could report)"
    if not row.get("pid"):
        return "failed", "the worker never started (the process that queued it stopped first)"
    # The log's name only: the message is shown in the page, and the workspace's location is not the page's.
    return "failed", (f"the worker process (pid {row['pid']}) is gone without reporting an end state; "
                      f"see its log jobs/{Path(row['log_path'] or '').name}")


def _update(workspace: Workspace, job_id: str, **changes) -> None:
    changes["updated_at"] = _now()
    with _db(workspace) as db:
        db["jobs"].update(job_id, changes)


def _check(workspace: Workspace, row: dict) -> dict:
    if row["state"] in ACTIVE and not _alive(row):
        time.sleep(0.05)
        with _db(workspace) as db:
            row = db["jobs"].get(row["job_id"])  # the worker may have reported just before exiting
        if row["state"] in ACTIVE:
            state, message = _settle(row)
            _update(workspace, row["job_id"], state=state, message=message)
            row = {**row, "state": state, "message": message}
    return row


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path or not Path(path).exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode("utf-8", "replace")
    # tqdm redraws with carriage returns: keep the last state of every line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join([line for line in cleaned if line.strip()][-lines:])


def _public(row: dict) -> dict:
    return {"job_id": row["job_id"], "kind": row["kind"], "run": row["run"], "dataset": row["dataset"],
            "state": row["state"], "step": row["step"] or 0, "total": row["total"] or 0,
            "message": row["message"] or "", "pid": row["pid"], "log_path": row["log_path"],
            "created_at": row["created_at"], "updated_at": row["updated_at"], "log_tail": log_tail(row["log_path"])}


# ---------------------------------------------------------------------------------------- spawning
def claim(workspace, kind: str, run: str = "", dataset: str = "", total: int = 0, step: int = 0,
          argv: list[str] | None = None, limit: int | None = None) -> str:
    """Create a queued job row that owns `run`, atomically: refused (WorkbenchError) when a queued or
    running job holds the run already, or when `limit` (default `max_jobs()`) jobs are active. Returns
    the job id; the caller starts the worker (`start_job` does both)."""
    workspace = _workspace(workspace)
    limit = max_jobs() if limit is None else limit
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    log_path = workspace.root / "jobs" / f"{job_id}.log"
    full = [sys.executable, "-m", "core", *(argv or []), "--workspace", str(workspace.root), "--job", job_id]
    with _db(workspace) as db:
        conn = db.conn
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN IMMEDIATE")  # the write lock: no other claim can read or insert until COMMIT
        try:
            active = []
            for row in conn.execute("select * from jobs where state in ('queued', 'running')").fetchall():
                row = dict(row)
                if _alive(row):
                    active.append(row)
                else:  # its worker is gone without reporting: settle it here so it stops holding the run
                    state, message = _settle(row)
                    conn.execute("update jobs set state = ?, message = ?, updated_at = ? where job_id = ?",
                                 [state, message, _now(), row["job_id"]])
            owner = next((row for row in active if run and row["run"] == run), None)
            if owner is not None:
                raise WorkbenchError(f"run '{run}' is in use by {owner['kind']} job {owner['job_id']} "
                                     f"({owner['state']}); wait for it to end or stop it first")
            if len(active) >= limit:
                raise WorkbenchError(f"{len(active)} jobs are queued or running already, the most this workspace "
                                     f"runs at once ({limit}; NOTELLM2_MAX_JOBS sets it); wait for one to end "
                                     "or stop one")
            now = _now()
            conn.execute("insert into jobs (job_id, kind, run, dataset, state, step, total, message, pid, pid_start,"
                         " log_path, argv, cancel_requested, created_at, updated_at)"
                         " values (?, ?, ?, ?, 'queued', ?, ?, 'starting', NULL, NULL, ?, ?, 0, ?, ?)",
                         [job_id, kind, run, dataset, int(step), int(total), str(log_path), json.dumps(full), now, now])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return job_id


def start_job(workspace, kind: str, argv: list[str], run: str = "", dataset: str = "", total: int = 0,
              step: int = 0) -> str:
    """Claim `run` (see `claim`), then start `python -m core <argv> --workspace W --job ID` in its own
    session; returns the job id."""
    workspace = _workspace(workspace)
    _reap()
    job_id = claim(workspace, kind, run, dataset, total, step, argv)
    with _db(workspace) as db:
        row = db["jobs"].get(job_id)
    full, log_path = json.loads(row["argv"]), Path(row["log_path"])
    log_path.parent.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=str(REPO_ROOT), env=env, start_new_session=True)
    except OSError as error:
        _update(workspace, job_id, state="failed", message=f"the worker could not start ({error.strerror or error})")
        raise WorkbenchError(f"the worker could not start ({error.strerror or error})") from None
    _children[process.pid] = process
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    _update(workspace, job_id, pid=process.pid, pid_start=process_start_time(process.pid))
    return job_id


def _reap() -> None:
    """Forget workers that have exited (their waiter thread has collected their exit status)."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


# ------------------------------------------------------------------------------------------- reading
def get_job(workspace, job_id: str) -> dict:
    workspace = _workspace(workspace)
    with _db(workspace) as db:
        try:
            row = db["jobs"].get(job_id)
        except sqlite_utils.db.NotFoundError:
            raise WorkbenchError(f"unknown job {job_id!r}") from None
    return _public(_check(workspace, row))


def list_jobs(workspace) -> list[dict]:
    workspace = _workspace(workspace)
    with _db(workspace) as db:
        rows = list(db.query("select * from jobs order by created_at desc, job_id desc"))
    return [_public(_check(workspace, row)) for row in rows]


def cancel(workspace, job_id: str) -> None:
    """Ask a job to stop; a training job saves a resumable checkpoint first."""
    workspace = _workspace(workspace)
    job = get_job(workspace, job_id)
    if job["state"] not in ACTIVE:
        return
    _update(workspace, job_id, cancel_requested=1, message="cancelling")
    with _db(workspace) as db:
        row = db["jobs"].get(job_id)
    if row["pid"] and _alive(row):
        try:
            os.kill(row["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    elif row["state"] == "queued":
        _update(workspace, job_id, state="cancelled", message="cancelled before it started")


def wait(workspace, job_id: str, timeout: float = 600, poll: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(workspace, job_id)
        if job["state"] not in ACTIVE or time.monotonic() > deadline:
            return job
        time.sleep(poll)


# -------------------------------------------------------------------------------- the worker's side
class JobReporter:
    """Used inside the worker: progress and the end state go to the job's row."""

    def __init__(self, workspace, job_id: str | None):
        self.workspace = _workspace(workspace)
        self.job_id = job_id
        self._last = 0.0

    def __bool__(self) -> bool:
        return self.job_id is not None

    def running(self, step: int = 0, total: int = 0, message: str = "", force: bool = False) -> None:
        if not self.job_id:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5 and step < total:
            return  # at most two writes a second
        self._last = now
        _update(self.workspace, self.job_id, state="running", step=step, total=total, message=message)

    def end(self, state: str, message: str = "", step: int | None = None) -> None:
        if not self.job_id:
            return
        changes = {"state": state, "message": message}
        if step is not None:
            changes["step"] = step
        _update(self.workspace, self.job_id, **changes)
