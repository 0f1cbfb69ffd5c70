"""``airflow scheduler`` with the movierec DAG's imports done once, up front::

    python -m pipeline.airflow_scheduler [options of airflow scheduler]

runs Airflow's own ``airflow scheduler [options]`` in this process after importing what
building the DAG imports (``pipeline.airflow_dag.preload``: TensorFlow, TFX and the
pipeline's modules, ~20 s of CPU; nothing of TensorFlow runs). The scheduler forks its DAG
file processors and, with the LocalExecutor, the process of every task, so these start
with the imports done: parsing the DAG file takes well under a second instead of ~25 s,
once per task and once per parse.

That matters beyond speed. A task whose process dies (killed, out of memory) is found by
the scheduler's "zombie" check (every ``[scheduler] zombie_detection_interval``, 10 s),
which asks the DAG file processor to fail it, and the processor parses the DAG file
first. While that parse runs, the check finds the same task again and queues the same
request again; Airflow 2.10 carries out each one, so the first puts the task up for
retry and the next fail its retry (apache/airflow#42553). With the plain ``airflow
scheduler`` set ``AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL`` well above the time the
DAG file takes to parse (a few minutes), or a killed task is not retried.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from pipeline import airflow_dag

    airflow_dag.preload()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", "scheduler", *(sys.argv[1:] if argv is None else argv)]
    airflow_main()


if __name__ == "__main__":
    main()
