"""The process's loaded encoders: one pool, whoever asks (the Workbench, the service functions, a worker).

An encoder is a run's NoteEncoder or a zero-shot baseline. It is loaded once per (workspace, name) and kept
while its fingerprint holds; the fingerprint changes whenever the weights do (a run's model.safetensors:
size and modification time; a baseline: its version), so a retrained run is reloaded, never served stale.
A few encoders are kept, least recently used first out. Each has a lock: one forward at a time, since
modules keep per-call state (feature caches, autocast).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from core.baselines import ZERO_SHOT_VERSION
from core.errors import WorkbenchError
from core.workspace import Workspace

log = logging.getLogger(__name__)

POOL_SIZE = 3
WEIGHTS_FILE = "model.safetensors"

_pool: OrderedDict = OrderedDict()  # (workspace root, name) -> (fingerprint, encoder)
_locks: dict = {}
_pool_lock = threading.Lock()


def _workspace(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)


def fingerprint(workspace, name: str) -> str:
    """Changes whenever the encoder's weights do, so everything keyed on it stays true. Resolves the name
    through the workspace first: nothing a request says becomes a path unchecked."""
    folder = _workspace(workspace).resolve_variant(name)
    if isinstance(folder, str):
        return f"{name}/v{ZERO_SHOT_VERSION}"
    try:
        stat = (Path(folder) / WEIGHTS_FILE).stat()
    except OSError:
        raise WorkbenchError(f"run '{name}' has no weights yet (still training, or it failed before saving)") from None
    return f"{name}/{stat.st_size}/{stat.st_mtime_ns}"


def lock(workspace, name: str) -> threading.RLock:
    """The lock to hold while running this encoder."""
    key = (str(_workspace(workspace).root), name)
    with _pool_lock:
        return _locks.setdefault(key, threading.RLock())


def load(workspace, name: str):
    """The encoder called `name`, from the pool when its weights are unchanged."""
    workspace = _workspace(workspace)
    current = fingerprint(workspace, name)
    key = (str(workspace.root), name)
    with lock(workspace, name):
        with _pool_lock:
            cached = _pool.get(key)
            if cached is not None and cached[0] == current:
                _pool.move_to_end(key)
                return cached[1]
        encoder = _build(workspace, name)
        with _pool_lock:
            _pool[key] = (current, encoder)
            _pool.move_to_end(key)
            while len(_pool) > POOL_SIZE:
                evicted, _ = _pool.popitem(last=False)
                log.info("unloaded encoder %s (pool of %d)", evicted[1], POOL_SIZE)
        return encoder


def _build(workspace: Workspace, name: str):
    from core.baselines import ZERO_SHOT, load_zero_shot
    from core.runtime import configure_threads, resolve_device

    configure_threads()
    device = resolve_device("auto")
    log.info("loading encoder %s on %s", name, device)
    if name in ZERO_SHOT:
        return load_zero_shot(name, device, workspace.root)
    from core.models.note_encoder import NoteEncoder

    encoder = NoteEncoder.from_pretrained(workspace.resolve_variant(name), device=device)
    encoder.eval()
    return encoder
