"""Shared benchmark plumbing: the machine header every result file starts with, timing
helpers, and JSON + markdown writers. Device-agnostic: GPU scripts pass a `sync`
callable (torch.cuda.synchronize) so host timers measure finished work.
"""
import collections
import ctypes
import datetime
import json
import os
import platform
import statistics
import time

import torch


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def settle_allocator():
    """Puts glibc's malloc in the state where it reuses freed memory for large tensors,
    and returns a line saying what was set (for the results header).

    Why: glibc maps every block over its mmap threshold afresh and returns it on free, so
    each call of such a size page-faults its memory in again. The threshold starts at
    128 KiB and rises only as large blocks are freed, up to 32 MiB; which rows ran before
    therefore decided how much of that a torch.nn row paid. nn.LSTM forward+backward at
    B=64, T=100, H=128 (2 threads) took ~33 ms in a fresh process and ~24 ms late in a full
    run or with the thresholds below, fastrnn ~25 ms in both (its large buffers are pooled,
    see csrc/cpu/workspace_pool.h). Fixed thresholds time every row of both libraries in
    the state a long training process (or jemalloc/tcmalloc) reaches: no per-call faults."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "not glibc: left as it is"
    mmap_threshold, trim_threshold = 64 << 20, 256 << 20
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and
            mallopt(_M_TRIM_THRESHOLD, trim_threshold)):
        return "glibc refused the thresholds: left as it is"
    return (f"glibc, mmap threshold {mmap_threshold >> 20} MiB, trim threshold "
            f"{trim_threshold >> 20} MiB (set by benchmarks.common.settle_allocator)")


def machine_header(device="cpu", threads=None, allocator=None):
    """What a reader needs to judge the numbers: device, CPU/GPU model, versions, thread
    count, date, the allocator setting (settle_allocator's line, when the script made one)
    and the load average (other work on the machine skews timings)."""
    header = {
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        header["gpu"] = torch.cuda.get_device_name()
    if allocator is not None:
        header["allocator"] = allocator
    if hasattr(os, "getloadavg"):
        header["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return header


def round_orders(names, rounds):
    """The order of the contenders in each of `rounds` rounds, such that over the rounds
    every contender follows each of the others about equally often: what a call leaves
    behind (threads still spinning, a cache it filled or emptied) does not fall on one
    contender more than on another. Each next contender is the one that has followed the
    contender just timed least often so far; ties go to the contender just timed (which
    can open the next round) and then to the earlier in `names`. For two contenders that
    is the rotation the benchmarks used before: AB, BA, AB, ...

    A rotation (each round starting one contender later) balances two contenders only.
    With three, each followed one of the others twice as often as the third: in
    benchmarks/layers_cpu.py's packed rows, fastrnn on packed input ran right after
    torch.nn in two rounds of three, and fastrnn on padded input right after fastrnn on
    packed input."""
    followed = collections.Counter()  # (previous, next) -> times
    previous = None
    orders = []
    for _ in range(rounds):
        left = list(names)
        order = []
        while left:
            name = min(left, key=lambda n: (followed[(previous, n)], n != previous))
            followed[(previous, name)] += 1
            order.append(name)
            left.remove(name)
            previous = name
        orders.append(order)
    return orders


def time_interleaved(fns, reps, warmup=3, sync=None, min_sample_s=2e-3):
    """Median seconds per call of each fn in `fns` (a dict name -> callable).

    The fns are timed in alternation, one sample each per round, so a burst of load on a
    shared machine hits every contender alike and their ratios stay meaningful. A sample
    is a run of back-to-back calls lasting at least `min_sample_s`: timing one
    microsecond-scale call alone measures the timer and a cache the other contender just
    evicted, not the call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if sync:
        sync()
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        calls[name] = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-9)))
    samples = {name: [] for name in fns}
    for order in round_orders(list(fns), reps):
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            if sync:
                sync()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def markdown_table(columns, rows):
    """rows: list of dicts; columns: list of (key, title, format or None)."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key, "")
            cells.append(fmt.format(value) if fmt and value != "" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(stem, header, rows, columns, title, notes=()):
    """benchmarks/results/<stem>.json ({header, rows}) and <stem>.md (header + table)."""
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    md = [f"# {title}", ""]
    md += [f"- {key}: {value}" for key, value in header.items()]
    md += ["", *notes, "", markdown_table(columns, rows), ""]
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write("\n".join(md))
    return os.path.join(out_dir, stem + ".md")
