"""`celery` under cProfile with a CPU clock, the profile saved on exit:

    python benchmarks/profiled_worker.py OUT_FILE -A broker worker ...

(benchmarks/refresh.py --profile-worker OUT_FILE starts its workers so)."""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> None:
    out_file = sys.argv[1]
    sys.argv = ["celery", *sys.argv[2:]]
    from celery.__main__ import main as celery

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        celery()
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out_file)


if __name__ == "__main__":
    main()
