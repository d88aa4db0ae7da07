"""The suite's hang watchdog (tests/fixtures/hangwatch.py), run in a pytest of its own.

A test stuck where pytest-timeout cannot end it must end its process with every thread's
stack written under the test's id, and a run where nothing hangs must leave no file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.deploy.tools import ROOT

STUCK = """
import threading
import time

def test_fine():
    pass

def test_stuck_in_a_join():
    worker = threading.Thread(target=time.sleep, args=(60,), name="forever")
    worker.start()
    worker.join()
"""


def nested_pytest(directory: Path, seconds: str, *args: str) -> subprocess.Popen[str]:
    (directory / "conftest.py").write_text('pytest_plugins = ["tests.fixtures.hangwatch"]\n')
    (directory / "test_nested.py").write_text(STUCK)
    env = {  # not this run's worker: xdist's variables name the file
        **{name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")},
        "PYTHONPATH": str(ROOT),
        "OLLAMA_WEB_TEST_HANG_SECONDS": seconds,
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:timeout"]
    return subprocess.Popen(
        [*command, "--rootdir", str(directory), *args],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def hang_files(directory: Path) -> list[Path]:
    return sorted((directory / ".test-logs").glob("hang-main-*.txt"))


def test_a_stuck_test_ends_its_process_with_the_stacks(tmp_path: Path) -> None:
    started = time.monotonic()
    process = nested_pytest(tmp_path, "2")
    output, _ = process.communicate(timeout=45)
    assert process.returncode != 0, output
    assert time.monotonic() - started < 40  # not the test's 60 s
    assert "1 passed" not in output  # the process ended in the stuck test
    [report] = hang_files(tmp_path)
    text = report.read_text()
    head = "running: test_nested.py::test_stuck_in_a_join (its watchdog ends it at 2 s)\n"
    assert text.startswith(head), text
    assert "Timeout (0:00:02)!" in text
    assert 'test_nested.py", line 11 in test_stuck_in_a_join' in text  # the main thread
    assert "in run" in text  # and the other one, in its sleep


def test_a_run_without_a_hang_leaves_no_file(tmp_path: Path) -> None:
    process = nested_pytest(tmp_path, "30", "-k", "fine")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "1 passed" in output
    assert (tmp_path / ".test-logs").is_dir()
    assert hang_files(tmp_path) == []


def test_sigusr1_writes_the_stacks_and_ends_nothing(tmp_path: Path) -> None:
    process = nested_pytest(tmp_path, "30")
    try:
        deadline = time.monotonic() + 30
        while not any("stuck" in path.read_text() for path in hang_files(tmp_path)):
            assert time.monotonic() < deadline, "the stuck test never started"
            time.sleep(0.05)
        # The header is written before the test's setup: a signal that lands before its body
        # runs writes stacks without it (seen once in CI on a slow host). Each signal adds
        # a dump; sent again until one shows the test in its join.
        deadline = time.monotonic() + 10
        while "test_stuck_in_a_join" not in hang_files(tmp_path)[0].read_text().split("\n", 1)[1]:
            assert time.monotonic() < deadline, "no stacks after SIGUSR1"
            process.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        time.sleep(0.3)
        assert process.poll() is None  # still running: the outer timeout kills it
    finally:
        process.kill()
        process.communicate()
