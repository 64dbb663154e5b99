"""Plugin: the declarative task files in this folder (importable as ``oodbench_tasks``).

Every ``*.toml`` file here is one task; bump its ``version`` whenever its
data, label or split rule changes, since results record it.
"""
from pathlib import Path

from oodbench import hookimpl
from oodbench.tasks import load_task_dir


@hookimpl
def oodbench_tasks():
    return load_task_dir(Path(__file__).parent)
