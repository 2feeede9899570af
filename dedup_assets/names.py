"""The names every layer shares: job names, run tags, the worker a step ran on, and what
the GPU steps ask of Kubernetes.

The assets write them, the definitions name their jobs with them, automation requests
runs by them and the runner and dispatch read them back. They are plain values, so this
module imports nothing of the project: it is the bottom of the house, and whatever
imports it cannot make a circle through it.
"""

from __future__ import annotations

import os
import socket
import sys

# ---------------------------------------------------------------------------- jobs
# The stages of the main job, in order, plus the one automation requests per class.
INDEX_JOB = "index_job"
INGEST_JOB = "ingest_job"
TRAIN_JOB = "train_job"
CLASS_JOB = "class_job"
UPDATE_CLASS_JOB = "update_class_job"
THRESHOLD_JOB = "threshold_job"
SUMMARY_JOB = "summary_job"

# ---------------------------------------------------------------------------- code location
# The code location the UI loads: workspace.yaml's `location_name`, and the one `dedup ui`
# writes into its instance folder. A `Definitions` object's repository is `__repository__`.
CODE_LOCATION = "latent_dedup"
REPOSITORY = "__repository__"
# The UI lists a job's runs (its Runs tab, the latest run in the Jobs list) by this hidden
# tag, which Dagster sets on runs with a code location origin; `dispatch.execute` gives
# `dedup run`'s in-process runs that origin (dagster issue #17707), and the runner sets
# the tag as well, for runs made before it did.
UI_REPOSITORY_TAG = ".dagster/repository"
UI_REPOSITORY_LABEL = f"{REPOSITORY}@{CODE_LOCATION}"

# ---------------------------------------------------------------------------- run tags
FULL_TAG = "latent_dedup/full"  # "1": recompute everything, ignoring earlier work
RETRAIN_TAG = "latent_dedup/retrain"  # "1": train the autoencoder again whatever the rules
PID_TAG = "latent_dedup/pid"  # the `dedup run` process that started the run
HOST_TAG = "latent_dedup/host"  # ... and its host (a dead one's runs are marked failed)
STAGE_TAG = "latent_dedup/stage"  # the stage of the main job the run belongs to
WORKER_TAG = "latent_dedup/worker"  # who ran a run sent to a worker
# "1": the thresholds' reports run at the same time (each refits its own threshold only)
THRESHOLDS_AT_ONCE_TAG = "latent_dedup/thresholds_at_once"
REASON_TAG = "latent_dedup/reason"  # why a sensor or schedule requested the run

# ---------------------------------------------------------------------------- workers
WORKER_METADATA = "worker"  # materialization metadata: who ran the step (`worker_name`)


def worker_name() -> str:
    """Who runs the current step: the Dask worker's address, else host:pid.

    A Dask worker has imported `distributed`; a process that has not is none, and is not
    made to import it (0.46 s of every `dedup run` on one machine)."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            return str(distributed.get_worker().address)
        except ValueError:  # not in a worker's task
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


# What the training and encoding steps ask of Kubernetes (read by dagster-k8s only).
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
            }
        }
    }
}
