"""benchmarks/common.py: the allocator setting the CPU benchmarks time under, the header
line that records it, and the order in which time_interleaved runs the contenders."""
import collections
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


@pytest.mark.parametrize("contenders", (2, 3, 4))
@pytest.mark.parametrize("rounds", (1, 21, 31, 60))
def test_every_contender_follows_each_other_about_equally_often(contenders, rounds):
    names = [f"c{i}" for i in range(contenders)]
    orders = common.round_orders(names, rounds)
    assert len(orders) == rounds
    assert all(sorted(order) == names for order in orders)
    sequence = [name for order in orders for name in order]
    followed = collections.Counter(zip(sequence, sequence[1:]))
    for name in names:
        counts = [followed[(other, name)] for other in names if other != name]
        # A rotation of three contenders over 21 rounds: 14 and 6 or 7.
        assert max(counts) - min(counts) <= 2, (name, counts)


def test_two_contenders_take_turns_opening_the_rounds():
    assert common.round_orders(["a", "b"], 4) == [["a", "b"], ["b", "a"], ["a", "b"],
                                                   ["b", "a"]]
