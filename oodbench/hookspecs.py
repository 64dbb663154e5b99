"""Every hook an oodbench plugin can implement.

A plugin is any importable module (or object) that implements some of these
hooks with the ``@oodbench.hookimpl`` decorator and is declared in the
``oodbench`` entry-point group of its package::

    [project.entry-points.oodbench]
    my-method = "my_package.my_method"

Each hook returns a list of things to register; the plugin manager collects
the lists of every plugin into the registries. A name registered twice is an
error that names both plugins.
"""
import pluggy

hookspec = pluggy.HookspecMarker("oodbench")


@hookspec
def oodbench_datasets():
    """Return a list of :class:`oodbench.data.DatasetSpec`.

    A dataset spec names a dataset (``matbench_phonons``…) and knows how to load
    it from the data home into a :class:`oodbench.data.Dataset` (ids,
    compositions, optional structures, raw target columns).
    """


@hookspec
def oodbench_tasks():
    """Return a list of :class:`oodbench.tasks.TaskSpec`.

    A task names a dataset, a label (column plus transform) and a split rule,
    and carries a version that every result records.
    """


@hookspec
def oodbench_task_families():
    """Return a list of :class:`oodbench.tasks.TaskFamily`.

    A family expands to many tasks (``mp-eform-loo-element:O``); its members
    are created on demand by name and listed with ``oodbench list tasks --family``.
    """


@hookspec
def oodbench_metrics():
    """Return a list of :class:`oodbench.metrics.Metric` (name, function, higher-is-better)."""


@hookspec
def oodbench_methods():
    """Return a list of :class:`oodbench.api.Method` subclasses (training methods)."""


@hookspec
def oodbench_backbones():
    """Return a list of :class:`oodbench.api.Backbone` subclasses (models)."""
