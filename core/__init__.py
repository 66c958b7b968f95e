"""NoteLLM-2 workbench core: models, data, training, retrieval and analysis. Never imports gradio."""
import os

# OpenMP threads that spin while waiting turn two torch processes on the same cores (the app and a training
# worker, two jobs) into a 10x slowdown: measured here, 2-57 s per training step instead of 4-7 s. Sleeping
# waits cost little when a process has the cores alone. Must be set before torch loads; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
