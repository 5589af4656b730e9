#!/usr/bin/env python3
"""Compare whole-job time and peak memory of the MONAI/PyTorch path and of thrombseg.

thrombseg replaces a Python serving path (MONAI transforms, MONAI sliding-window inference,
PyTorch SegResNet). This script runs both on the same input files and the same model bundle
and reports, per input:

- the median job time of each path and its stages, with the models already loaded, as a
  serving worker runs a job: read the .npz, preprocess, 3-D and 2-D inference, argmax
  masks, write the masks .npz;
- the arithmetic rate each network reached (the bundle's GFLOP per window times the
  windows run, divided by the branch's seconds);
- the peak resident memory of each path, each measured in its own child process;
- this machine's fp32 matrix-multiply rate, measured with PyTorch, and the FLOP-bound
  time of the networks' work at that rate, so each job time can be read as a multiple
  of what the arithmetic alone needs;
- the speed-up of thrombseg over the MONAI path and whether it reaches the target of at
  most one third of the MONAI path's time.

The MONAI path is the pipeline of tools/reference.py, imported from it. thrombseg runs as
`thrombseg bench INPUT --repeat N --json`, so build it first with `cargo build --release`.
Everything runs one step at a time (matmul rate, then per input the MONAI path and then
thrombseg), so that no two measurements share the CPU cores. The matmul rate is a practical
ceiling for fp32 arithmetic on this machine, not the CPU's theoretical peak.

Usage, with the tools/requirements.txt packages installed:

    python tools/bench_compare.py --repeat 3 --markdown
    python tools/bench_compare.py fixtures/input_file_example.npz --repeat 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    import reference

# This process only launches and compares. PyTorch, MONAI and tools/reference.py are imported
# inside the worker functions, which run in child processes (see run_child for the reason).

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUTS = (
    REPOSITORY_ROOT / "fixtures" / "input_file_example.npz",
    REPOSITORY_ROOT / "fixtures" / "ct_brain_atlas_1mm.npz",
)
# The same folder as reference.DEFAULT_BUNDLE.
DEFAULT_BUNDLE = REPOSITORY_ROOT / "fixtures" / "models"
DEFAULT_BINARY = REPOSITORY_ROOT / "target" / "release" / "thrombseg"

# thrombseg must take at most this fraction of the MONAI path's job time.
SPEED_UP_TARGET = 3.0
MATMUL_RUNS = 5
BYTES_PER_MB = 1e6
MONAI_LABEL = "MONAI/PyTorch"
THROMBSEG_LABEL = "thrombseg"
WORKER_FLAG = "--worker"
MATMUL_WORKER = "matmul"
MONAI_WORKER = "monai"


class BenchError(Exception):
    """A failed check or child process, with a message for the user."""


@dataclass
class ChildResult:
    """Output of a finished child process and its peak resident memory."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time whole jobs of the MONAI/PyTorch path and of `thrombseg bench` on the same "
            "inputs and bundle, and compare both with this machine's fp32 matrix-multiply rate."
        ),
    )
    parser.add_argument(
        "inputs",
        type=Path,
        nargs="*",
        help=".npz input files with volume, non_mdc_mean and non_mdc_var "
        "(default: fixtures/input_file_example.npz and fixtures/ct_brain_atlas_1mm.npz)",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=DEFAULT_BUNDLE,
        help="model bundle folder with bundle.json; both paths use it (default: %(default)s)",
    )
    parser.add_argument(
        "--thrombseg",
        type=Path,
        default=DEFAULT_BINARY,
        help="thrombseg executable, built with `cargo build --release` (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=3,
        help="jobs per input and path; the tables show medians (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="PyTorch threads (torch.set_num_threads) for the MONAI path and the matmul; "
        "thrombseg gets no thread option and uses its own default (default: %(default)s)",
    )
    parser.add_argument(
        "--matmul-size",
        type=positive_int,
        default=4096,
        help="side of the square float32 matrices that measure the matmul rate (default: %(default)s)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="also print the summary as a GitHub markdown table")
    output.add_argument("--json", action="store_true", help="print one JSON object with every measurement instead of tables")
    # Internal: run one measurement in this child process and print its result as JSON.
    parser.add_argument(WORKER_FLAG, choices=(MATMUL_WORKER, MONAI_WORKER), help=argparse.SUPPRESS)

    args = parser.parse_args(argv)
    if not args.inputs:
        args.inputs = list(DEFAULT_INPUTS)
    return args


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value}")
    return value


def median(values: list[float]) -> float:
    """Return the upper median, the value `thrombseg bench` reports for an even number of runs."""
    return statistics.median_high(values)


# Workers, run in child processes of this script.


class FirstCallClock:
    """Predictor wrapper that stores the `time.perf_counter()` value of its first call."""

    def __init__(self, predictor: reference.Predictor) -> None:
        self.predictor = predictor
        self.first_call: float | None = None

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        return self.predictor(window)


def time_monai_job(
    input_path: Path,
    output_path: Path,
    bundle: dict[str, Any],
    predictor_3d: reference.Predictor,
    predictor_2d: reference.Predictor,
) -> dict[str, float]:
    """Run one whole job with loaded models. Returns seconds per stage and the job total."""
    import reference

    started = time.perf_counter()
    volume, mean, variance = reference.load_input(input_path)
    read_done = time.perf_counter()

    image = reference.preprocess(volume, mean, variance, float(bundle["window_sigmas"]))
    preprocess_done = time.perf_counter()

    # reference.infer runs both branches in one call. The 3-D branch ends where the 2-D
    # network first runs.
    # NOTE: the 2-D branch's padding and window setup before that first call (a copy of the
    # slices) is counted as 3-D time.
    clock_2d = FirstCallClock(predictor_2d)
    logits_3d, logits_2d = reference.infer(image, bundle, predictor_3d, clock_2d)
    infer_done = time.perf_counter()
    if clock_2d.first_call is None:
        raise BenchError(f"the 2-D network never ran on {input_path}")

    # NOTE: summarize also computes the two scores (a softmax over the 3-D logits), which
    # `thrombseg bench` computes only with --explain. Both write a compressed masks .npz.
    outputs = reference.summarize(logits_3d, logits_2d)
    reference.save_outputs(output_path, outputs, masks_only=True)
    written = time.perf_counter()

    return {
        "read": read_done - started,
        "preprocess": preprocess_done - read_done,
        "infer_3d": clock_2d.first_call - preprocess_done,
        "infer_2d": infer_done - clock_2d.first_call,
        "postprocess_write": written - infer_done,
        "job": written - started,
    }


def read_input_shape(input_path: Path) -> list[int]:
    """Check that `input_path` is a valid input before any timing. Returns the volume shape."""
    import reference

    try:
        volume, _, _ = reference.load_input(input_path)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        # np.load raises these for a file that is not a valid .npy or .npz file.
        raise BenchError(f"cannot read {input_path} as an .npz input: {error}") from error
    return list(volume.shape)


def run_monai_worker(input_path: Path, bundle_dir: Path, repeat: int, threads: int) -> dict[str, Any]:
    """Load the bundle's PyTorch networks once, then time `repeat` jobs on one input."""
    import monai
    import numpy as np
    import torch
    from monai.data import set_track_meta

    import reference

    shape = read_input_shape(input_path)
    torch.set_num_threads(threads)
    # Plain tensors instead of MetaTensors, as tools/reference.py runs the pipeline.
    set_track_meta(False)
    bundle = reference.load_bundle(bundle_dir)
    predictor_3d = reference.torch_predictor(bundle["networks"]["3d"], bundle_dir)
    predictor_2d = reference.torch_predictor(bundle["networks"]["2d"], bundle_dir)

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        output_path = Path(scratch) / "masks.npz"
        for _ in range(repeat):
            runs.append(time_monai_job(input_path, output_path, bundle, predictor_3d, predictor_2d))

    stages = ("read", "preprocess", "infer_3d", "infer_2d", "postprocess_write")
    return {
        "input": str(input_path),
        "shape": shape,
        "runs": repeat,
        "threads": threads,
        "median_seconds": {stage: median([run[stage] for run in runs]) for stage in stages},
        "job_seconds": median([run["job"] for run in runs]),
        "job_seconds_each_run": [run["job"] for run in runs],
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "numpy": np.__version__},
    }


def measure_matmul_rate(size: int, runs: int, threads: int) -> dict[str, Any]:
    """Time a square float32 matmul with `threads` PyTorch threads. Reports the best of `runs` after one warm-up."""
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    left = torch.rand(size, size, generator=generator, dtype=torch.float32)
    right = torch.rand(size, size, generator=generator, dtype=torch.float32)
    product = torch.empty(size, size, dtype=torch.float32)
    torch.matmul(left, right, out=product)

    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        torch.matmul(left, right, out=product)
        best = min(best, time.perf_counter() - started)

    gflop = 2.0 * size**3 / 1e9
    return {
        "size": size,
        "runs": runs,
        "threads": threads,
        "gflop": gflop,
        "best_seconds": best,
        "gflop_per_second": gflop / best,
        "torch": torch.__version__,
    }


def worker_main(args: argparse.Namespace) -> int:
    """Run the measurement named by --worker and print its result as one JSON line."""
    import reference

    try:
        if args.worker == MATMUL_WORKER:
            result = measure_matmul_rate(args.matmul_size, MATMUL_RUNS, args.threads)
        elif len(args.inputs) != 1:
            raise BenchError(f"{WORKER_FLAG} {MONAI_WORKER} takes exactly one input, got {len(args.inputs)}")
        else:
            result = run_monai_worker(args.inputs[0], args.bundle, args.repeat, args.threads)
    except (reference.ReferenceInputError, BenchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


# Child processes and their peak memory.


def run_child(command: list[str], cwd: Path) -> ChildResult:
    """Run `command` to completion and read its peak resident memory from os.wait4.

    os.wait4 returns the rusage of exactly this child. getrusage(RUSAGE_CHILDREN) would not do,
    because it keeps the maximum over all children so far, so a smaller second child would
    read as the first one's peak. ru_maxrss (KiB on Linux) is the largest resident set of the
    child and of any descendant it waited for. The children here start no processes.

    On Linux the child's ru_maxrss never reads below this process's own peak: measured with
    Python 3.11 on Linux 6.18, `true` read 395 MB after the parent had touched and freed
    400 MB. subprocess starts the child with vfork, and exec keeps the peak of the memory map
    it replaces. That is why this process never imports PyTorch and stays small.
    launcher_peak_rss_bytes in the --json output is that floor.
    """
    with tempfile.TemporaryFile() as stdout_file, tempfile.TemporaryFile() as stderr_file:
        try:
            process = subprocess.Popen(command, cwd=cwd, stdout=stdout_file, stderr=stderr_file)
        except OSError as error:
            raise BenchError(f"failed to start {command[0]}: {error}") from error
        with process:
            _, status, usage = os.wait4(process.pid, 0)
            # Popen must not wait for the child again, since it has been reaped here.
            process.returncode = os.waitstatus_to_exitcode(status)

        stdout_file.seek(0)
        stderr_file.seek(0)
        return ChildResult(
            command=command,
            returncode=process.returncode,
            stdout=stdout_file.read().decode("utf-8", errors="replace"),
            stderr=stderr_file.read().decode("utf-8", errors="replace"),
            peak_rss_bytes=usage.ru_maxrss * 1024,
        )


def check_child(result: ChildResult, label: str) -> None:
    if result.returncode == 0:
        return
    stderr = result.stderr.strip() or "(no error output)"
    raise BenchError(
        f"{label} failed with exit status {result.returncode}: {' '.join(result.command)}\n{stderr}"
    )


def parse_json_object(stdout: str, label: str) -> dict[str, Any]:
    """Parse the one JSON object line that a child printed on stdout."""
    objects = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise BenchError(f"invalid JSON line from {label}: {error}: {line[:200]}") from error
    if len(objects) != 1:
        raise BenchError(f"expected one JSON object from {label}, got {len(objects)}; stdout was:\n{stdout[:2000]}")
    return objects[0]


def run_worker(arguments: list[str], label: str) -> ChildResult:
    """Run this script with --worker and `arguments` in a child process."""
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    result = run_child(command, cwd=REPOSITORY_ROOT)
    check_child(result, label)
    return result


def measure_matmul_rate_in_child(size: int, threads: int) -> dict[str, Any]:
    arguments = [WORKER_FLAG, MATMUL_WORKER, "--matmul-size", str(size), "--threads", str(threads)]
    result = run_worker(arguments, "matmul rate measurement")
    return parse_json_object(result.stdout, "matmul rate measurement")


def run_monai_path(input_path: Path, bundle_dir: Path, repeat: int, threads: int) -> dict[str, Any]:
    """Run the MONAI path on one input in a child process. Returns its timings and measured peak."""
    arguments = [
        WORKER_FLAG,
        MONAI_WORKER,
        str(input_path),
        "--bundle",
        str(bundle_dir),
        "--repeat",
        str(repeat),
        "--threads",
        str(threads),
    ]
    result = run_worker(arguments, "MONAI path")
    report = parse_json_object(result.stdout, "MONAI path")
    report["peak_rss_bytes"] = result.peak_rss_bytes
    return report


def run_thrombseg(binary: Path, input_path: Path, bundle_dir: Path, repeat: int) -> dict[str, Any]:
    """Run `thrombseg bench --json` on one input. Returns its JSON report and the measured peak.

    The working directory is the repository root, so thrombseg finds `.onnxruntime/` there
    unless ORT_DYLIB_PATH is set.
    """
    command = [str(binary), "bench", str(input_path), "--repeat", str(repeat), "--json", "--bundle", str(bundle_dir)]
    result = run_child(command, cwd=REPOSITORY_ROOT)
    check_child(result, "thrombseg bench")
    report = parse_json_object(result.stdout, "thrombseg bench")
    report["measured_peak_rss_bytes"] = result.peak_rss_bytes
    return report


# Combining and printing the results.


def number(mapping: dict[str, Any] | None, key: str) -> float | None:
    """Return mapping[key] as a float, or None where the mapping or the key is missing or null."""
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def sum_present(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0.0:
        return None
    return numerator / denominator


def thrombseg_job_seconds(report: dict[str, Any]) -> float:
    """Return the job time of a `thrombseg bench` report.

    thrombseg reports the sum of the per-stage medians, not the median of the job totals.
    For one run both are the same.
    """
    total = number(report, "total_seconds")
    if total is None:
        total = sum_present([number(report.get("median_seconds"), stage) for stage in thrombseg_stages(report)])
    if total is None:
        raise BenchError(f"thrombseg bench JSON for {report.get('input')} has no total_seconds and no median_seconds")
    return total


def thrombseg_stages(report: dict[str, Any]) -> list[str]:
    stages = report.get("median_seconds")
    return list(stages) if isinstance(stages, dict) else []


def path_row(
    label: str,
    job_seconds: float,
    stage_seconds: dict[str, float | None],
    gflop_3d: float | None,
    gflop_2d: float | None,
    peak_rss_bytes: int | None,
    flop_bound_seconds: float | None,
) -> dict[str, Any]:
    """Build one summary-table row. Stages: read, preprocess, infer_3d, infer_2d, postprocess_write."""
    return {
        "path": label,
        "job_seconds": job_seconds,
        "stage_seconds": stage_seconds,
        "gflop_per_second_3d": ratio(gflop_3d, stage_seconds["infer_3d"]),
        "gflop_per_second_2d": ratio(gflop_2d, stage_seconds["infer_2d"]),
        "peak_mb": None if peak_rss_bytes is None else peak_rss_bytes / BYTES_PER_MB,
        "times_flop_bound": ratio(job_seconds, flop_bound_seconds),
    }


def compare_input(monai_report: dict[str, Any], thrombseg_report: dict[str, Any], matmul_rate: float) -> dict[str, Any]:
    """Combine both paths' reports on one input into the summary for that input."""
    gflop_3d = number(thrombseg_report.get("branch_3d"), "gflop")
    gflop_2d = number(thrombseg_report.get("branch_2d"), "gflop")
    network_gflop = None if gflop_3d is None or gflop_2d is None else gflop_3d + gflop_2d
    flop_bound_seconds = ratio(network_gflop, matmul_rate)

    monai_stages = dict(monai_report["median_seconds"])
    monai_row = path_row(
        MONAI_LABEL,
        monai_report["job_seconds"],
        monai_stages,
        gflop_3d,
        gflop_2d,
        monai_report["peak_rss_bytes"],
        flop_bound_seconds,
    )

    # Map thrombseg's stages onto the MONAI path's: np.load both reads and decodes, and
    # save_outputs both encodes and writes.
    rust_stages = thrombseg_report.get("median_seconds")
    thrombseg_stage_seconds = {
        "read": sum_present([number(rust_stages, "read"), number(rust_stages, "decode")]),
        "preprocess": number(rust_stages, "preprocess"),
        "infer_3d": number(rust_stages, "infer_3d"),
        "infer_2d": number(rust_stages, "infer_2d"),
        "postprocess_write": sum_present(
            [number(rust_stages, "postprocess"), number(rust_stages, "encode"), number(rust_stages, "write")]
        ),
    }
    thrombseg_seconds = thrombseg_job_seconds(thrombseg_report)
    thrombseg_row = path_row(
        THROMBSEG_LABEL,
        thrombseg_seconds,
        thrombseg_stage_seconds,
        gflop_3d,
        gflop_2d,
        thrombseg_report["measured_peak_rss_bytes"],
        flop_bound_seconds,
    )

    speed_up = ratio(monai_report["job_seconds"], thrombseg_seconds)
    return {
        "input": monai_report["input"],
        "shape": monai_report["shape"],
        "network_gflop": network_gflop,
        "network_gflop_3d": gflop_3d,
        "network_gflop_2d": gflop_2d,
        "flop_bound_seconds": flop_bound_seconds,
        "rows": [monai_row, thrombseg_row],
        "thrombseg_reported_peak_rss_bytes": thrombseg_report.get("peak_rss_bytes"),
        "speed_up": speed_up,
        "speed_up_target": SPEED_UP_TARGET,
        "meets_target": speed_up is not None and speed_up >= SPEED_UP_TARGET,
        "monai": monai_report,
        "thrombseg": thrombseg_report,
    }


def format_value(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_shape(shape: list[int]) -> str:
    return "×".join(str(side) for side in shape)


def target_verdict(comparison: dict[str, Any]) -> str:
    speed_up = comparison["speed_up"]
    if speed_up is None:
        return "speed-up unknown"
    verdict = "met" if comparison["meets_target"] else "not met"
    return f"{speed_up:.2f}× (target ≥ {SPEED_UP_TARGET:g}×: {verdict})"


TABLE_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("path", lambda row: row["path"]),
    ("job s", lambda row: format_value(row["job_seconds"], 2)),
    ("read s", lambda row: format_value(row["stage_seconds"]["read"], 3)),
    ("preprocess s", lambda row: format_value(row["stage_seconds"]["preprocess"], 3)),
    ("3-D s", lambda row: format_value(row["stage_seconds"]["infer_3d"], 2)),
    ("2-D s", lambda row: format_value(row["stage_seconds"]["infer_2d"], 2)),
    ("post+write s", lambda row: format_value(row["stage_seconds"]["postprocess_write"], 3)),
    ("3-D GFLOP/s", lambda row: format_value(row["gflop_per_second_3d"], 1)),
    ("2-D GFLOP/s", lambda row: format_value(row["gflop_per_second_2d"], 1)),
    ("peak MB", lambda row: format_value(row["peak_mb"], 0)),
    ("× FLOP bound", lambda row: format_value(row["times_flop_bound"], 1)),
)


def print_header(results: dict[str, Any]) -> None:
    environment = results["environment"]
    matmul = results["matmul"]
    intra_threads = environment["thrombseg_intra_threads_env"]
    thrombseg_threads = (
        f"THROMBSEG_INTRA_THREADS={intra_threads}" if intra_threads else "its default ONNX Runtime threads"
    )
    print(
        f"CPU cores: {environment['cpu_count']}; PyTorch threads: {environment['torch_threads']}; "
        f"thrombseg: {thrombseg_threads}; {results['repeat']} job(s) per input and path"
    )
    versions = ", ".join(f"{name} {version}" for name, version in environment["versions"].items())
    print(f"Python {environment['python']}, {versions}")
    print(
        f"fp32 matmul rate: {matmul['gflop_per_second']:.1f} GFLOP/s "
        f"({matmul['size']}×{matmul['size']}, best of {matmul['runs']} after a warm-up)"
    )


def print_text_table(comparison: dict[str, Any]) -> None:
    print()
    print(f"{comparison['input']}  shape {format_shape(comparison['shape'])}")
    print(
        f"  network work {format_value(comparison['network_gflop'], 1)} GFLOP "
        f"(3-D {format_value(comparison['network_gflop_3d'], 1)}, 2-D {format_value(comparison['network_gflop_2d'], 1)}), "
        f"FLOP bound {format_value(comparison['flop_bound_seconds'], 2)} s"
    )
    cells = [[header for header, _ in TABLE_COLUMNS]]
    cells += [[cell(row) for _, cell in TABLE_COLUMNS] for row in comparison["rows"]]
    widths = [max(len(line[column]) for line in cells) for column in range(len(TABLE_COLUMNS))]
    for line in cells:
        first = line[0].ljust(widths[0])
        rest = "  ".join(text.rjust(width) for text, width in zip(line[1:], widths[1:]))
        print(f"  {first}  {rest}")

    reported = comparison["thrombseg_reported_peak_rss_bytes"]
    if isinstance(reported, (int, float)):
        print(f"  thrombseg's own peak_rss_bytes (VmHWM): {reported / BYTES_PER_MB:.0f} MB")
    provider = comparison["thrombseg"].get("execution_provider")
    if provider is not None:
        print(f"  thrombseg execution provider: {provider}")
    print(f"  speed-up of thrombseg over MONAI/PyTorch: {target_verdict(comparison)}")


def print_markdown_table(comparisons: list[dict[str, Any]]) -> None:
    headers = ["input", "path", "job s", "3-D s", "2-D s", "3-D GFLOP/s", "2-D GFLOP/s", "peak MB", "× FLOP bound", "speed-up"]
    print()
    print("| " + " | ".join(headers) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in headers[2:]) + " |")
    for comparison in comparisons:
        name = f"{Path(comparison['input']).name}, {format_shape(comparison['shape'])}"
        for row in comparison["rows"]:
            speed_up = target_verdict(comparison) if row["path"] == THROMBSEG_LABEL else ""
            cells = [
                name,
                row["path"],
                format_value(row["job_seconds"], 2),
                format_value(row["stage_seconds"]["infer_3d"], 2),
                format_value(row["stage_seconds"]["infer_2d"], 2),
                format_value(row["gflop_per_second_3d"], 1),
                format_value(row["gflop_per_second_2d"], 1),
                format_value(row["peak_mb"], 0),
                format_value(row["times_flop_bound"], 1),
                speed_up,
            ]
            print("| " + " | ".join(cells) + " |")


def environment_summary(threads: int, comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """Describe the interpreter, the package versions the MONAI path ran with, and the thread settings."""
    versions = comparisons[0]["monai"].get("versions", {}) if comparisons else {}
    return {
        "python": platform.python_version(),
        "versions": versions,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "thrombseg_intra_threads_env": os.environ.get("THROMBSEG_INTRA_THREADS"),
        "launcher_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


# Checks and the main program.


def check_paths(args: argparse.Namespace) -> None:
    """Reject a missing input, bundle or thrombseg executable before any measurement starts."""
    if not args.thrombseg.is_file():
        raise BenchError(
            f"thrombseg executable not found: {args.thrombseg}. "
            "Build it with `cargo build --release` or pass its path with --thrombseg."
        )
    if not os.access(args.thrombseg, os.X_OK):
        raise BenchError(f"thrombseg executable is not executable: {args.thrombseg}")
    for input_path in args.inputs:
        if not input_path.is_file():
            raise BenchError(f"input file not found: {input_path}")
    # The MONAI worker checks the bundle's digests when it loads it.
    manifest = args.bundle / "bundle.json"
    if not manifest.is_file():
        raise BenchError(f"bundle manifest not found: {manifest}. Pass the bundle folder with --bundle.")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compare_all(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the matmul rate, then each input with the MONAI path and then thrombseg."""
    inputs = [path.resolve() for path in args.inputs]
    bundle_dir = args.bundle.resolve()
    binary = args.thrombseg.resolve()

    progress(f"measuring the fp32 matmul rate ({args.matmul_size}×{args.matmul_size}, {args.threads} threads)")
    matmul = measure_matmul_rate_in_child(args.matmul_size, args.threads)

    comparisons = []
    for input_path in inputs:
        progress(f"{input_path.name}: MONAI/PyTorch path, {args.repeat} job(s)")
        monai_report = run_monai_path(input_path, bundle_dir, args.repeat, args.threads)
        progress(f"{input_path.name}: thrombseg bench, {args.repeat} job(s)")
        thrombseg_report = run_thrombseg(binary, input_path, bundle_dir, args.repeat)

        thrombseg_shape = thrombseg_report.get("shape")
        if thrombseg_shape is not None and list(thrombseg_shape) != monai_report["shape"]:
            raise BenchError(
                f"shape mismatch on {input_path}: MONAI path read {monai_report['shape']}, thrombseg {thrombseg_shape}"
            )
        comparisons.append(compare_input(monai_report, thrombseg_report, matmul["gflop_per_second"]))

    return {
        "environment": environment_summary(args.threads, comparisons),
        "bundle": str(bundle_dir),
        "thrombseg_executable": str(binary),
        "repeat": args.repeat,
        "matmul": matmul,
        "inputs": comparisons,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)

    try:
        check_paths(args)
        results = compare_all(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    print_header(results)
    for comparison in results["inputs"]:
        print_text_table(comparison)
    if args.markdown:
        print_markdown_table(results["inputs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
