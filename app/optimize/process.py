"""Run the optimisation step in a worker process, with a time limit.

The quantizers and converters are Python code holding the GIL for seconds at a time and
onnxruntime sessions using every core: in a separate process (at a lower CPU priority when
the server asks) they cannot stall the server's event loop, and a step that runs past its
time limit is killed, which a thread could not be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from app.optimize.errors import OptimizationFailed, OptimizationRefused
from app.optimize.step import OptimizeJob

#: The worker's marker for its one result line on stdout.
RESULT = "OPTIMIZATION_RESULT "
#: Added to the worker's nice value when it runs beside a serving process.
BACKGROUND_NICENESS = 10


def run_job(job: OptimizeJob, *, background: bool = False) -> dict[str, Any]:
    """Optimise ``job`` in a worker process (blocking); the report, or the step's error."""
    timeout = job.options.timeout_seconds
    command = [sys.executable, "-m", "app.optimize.worker"]
    if background:
        command.append("--background")
    try:
        done = subprocess.run(
            command,
            input=json.dumps(job.as_dict()),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OptimizationFailed(
            f"the {job.options.to} optimisation of '{job.name}' took longer than {timeout:g} s "
            "and was stopped (optimize.timeout_seconds / --timeout)"
        ) from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            result: dict[str, Any] = json.loads(line[len(RESULT) :])
            break
    else:
        tail = done.stderr.strip().splitlines()[-3:]
        raise OptimizationFailed(
            f"the optimisation process of '{job.name}' ended with status {done.returncode} "
            f"and no result: {' | '.join(tail) or 'no output'}"
        )
    if result["ok"]:
        report: dict[str, Any] = result["report"]
        return report
    if result.get("refused"):
        raise OptimizationRefused(result["error"], result.get("report"))
    raise OptimizationFailed(result["error"])


def _exit_with_parent(parent: int) -> None:
    """End the worker once the process that started it is gone (nobody reads its result)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def worker_main(argv: list[str]) -> int:
    """The worker: a job as JSON on stdin, one result line on stdout."""
    from app.optimize.step import optimize

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if "--background" in argv:
        os.nice(BACKGROUND_NICENESS)
    job = OptimizeJob.from_dict(json.loads(sys.stdin.read()))
    try:
        result: dict[str, Any] = {"ok": True, "report": optimize(job)}
    except OptimizationRefused as exc:
        result = {"ok": False, "refused": True, "error": exc.message, "report": exc.report}
    except OptimizationFailed as exc:
        result = {"ok": False, "error": exc.message}
    except Exception as exc:  # any other failure of the tools, reported rather than a trace
        result = {"ok": False, "error": f"the optimisation failed: {type(exc).__name__}: {exc}"}
    sys.stdout.write(RESULT + json.dumps(result) + "\n")
    return 0
