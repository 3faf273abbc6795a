#!/usr/bin/env python3
"""Purge runs deleted more than MLFLOW_GC_OLDER_THAN ago (`mlflow gc`), artifacts included.

Runs as the mlflow-gc job (a systemd timer) with the MLflow venv's Python. The
backend store's URL comes from the environment, never from the command line
where `ps` would show its password; artifacts are deleted through the tracking
server (artifact proxying), as the admin.
"""

import os
import sys

from mlflow.cli import gc

gc.main(
    [
        "--older-than",
        os.environ.get("MLFLOW_GC_OLDER_THAN", "30d"),
        "--backend-store-uri",
        os.environ["MLFLOW_BACKEND_STORE_URI"],
    ],
    standalone_mode=False,
)
sys.exit(0)
