"""Run every benchmark and print its figures: ``python -m bench [name ...]``."""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")


def main(names: list[str]) -> None:
    from . import (cold_start, dataset_build, gradient_check, http_load, inference, job_list, slow_clients,
                   train_speed, validation)
    suites = {"train_speed": train_speed.run, "validation": validation.run, "http_load": http_load.run,
              "gradient_check": gradient_check.run, "slow_clients": slow_clients.run, "job_list": job_list.run,
              "cold_start": cold_start.run, "inference": inference.run, "dataset_build": dataset_build.run}
    from . import celery_scale
    suites["celery_scale"] = celery_scale.run
    for name in names or list(suites):
        result = suites[name]()
        print(f"{name}: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
