"""oodbench's built-in plugins, importable as ``oodbench_plugins``.

Each module here is declared in the ``oodbench`` entry-point group of
pyproject.toml, exactly as a third-party plugin declares its own.
"""
