"""Dataset plugins shipped with oodbench (beyond the core matbench and MP loaders)."""
