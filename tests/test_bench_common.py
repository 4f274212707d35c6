"""benchmarks/common.py: the allocator setting the CPU benchmarks time under, and the header
line that records it."""
import pathlib
import platform
import subprocess
import sys

import pytest

from benchmarks import common


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_settle_allocator_sets_glibc_thresholds_and_header_records_them():
    # In a child process: the thresholds stay set for the rest of the process.
    line = subprocess.run(
        [sys.executable, "-c",
         "from benchmarks.common import settle_allocator; print(settle_allocator())"],
        cwd=pathlib.Path(__file__).parents[1], check=True, capture_output=True,
        text=True).stdout.strip()
    assert line.startswith("glibc, mmap threshold 64 MiB, trim threshold 256 MiB"), line
    assert common.machine_header("cpu", allocator=line)["allocator"] == line


def test_header_has_no_allocator_line_unless_given():
    assert "allocator" not in common.machine_header("cpu")
