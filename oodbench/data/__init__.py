"""Datasets: where they live (the data home), how they load, and the on-disk cache."""
from .core import (Dataset, DatasetSpec, DataNotFoundError, cache_dir, data_home, file_sha256,
                   load_dataset)

__all__ = ["Dataset", "DatasetSpec", "DataNotFoundError", "cache_dir", "data_home", "file_sha256",
           "load_dataset"]
