"""dgs-detect against `dgs scan` on the fixtures' photo folder (run by ctest).

    python check_dgs_detect.py <dgs-detect> <dgs-detect-test> <fixtures folder>

`dgs scan` runs the packages with ONNX Runtime; dgs-detect-test (dgs-detect linked with the test-only mean
backend, which computes what the fixtures' graphs compute) runs them with --backend test-mean. Their CSV files must
list the same files in the same order, with the same labels, errors in the same rows and probabilities within the
fixtures' tolerance, written the same way (quoting, CRLF, formula neutralisation, Python's float repr); their exit
codes and summary counts must agree. The real dgs-detect must exit 2 saying why where it has no backend that runs
(no TensorRT, or no GPU), and scan as dgs scan does where it has one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
failures: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        failures.append(message)
        print(f"FAILED: {message}", file=sys.stderr)


def dgs_scan(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("sdk", "trainer", "export"))}
    return subprocess.run([sys.executable, "-m", "dgs_sdk.cli", "scan", *args, "--backend", "onnxruntime",
                           "--device", "cpu", "--no-progress"], cwd=cwd, env=env, capture_output=True)


def detect(program: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([program, *args], cwd=cwd, capture_output=True)


def rows_of(data: bytes, what: str) -> list[list[str]]:
    text = data.decode("utf-8", "surrogateescape")
    check(text.endswith("\r\n") and "\n" not in text.replace("\r\n", ""), f"{what}: every line ends in CRLF")
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def summary_counts(stderr: bytes) -> str:
    """The summary line up to its timing: "18 files: 8 real, 6 fake, 4 errors"."""
    lines = [line for line in stderr.decode(errors="replace").splitlines() if " files: " in line]
    return lines[-1].split(" in ")[0] if lines else "<no summary line>"


def compare(python: subprocess.CompletedProcess, native: subprocess.CompletedProcess, python_csv: bytes,
            native_csv: bytes, tolerance_of, what: str) -> None:
    check(native.returncode == python.returncode,
          f"{what}: exit code {native.returncode}, dgs scan's {python.returncode} ({native.stderr.decode()})")
    check(summary_counts(native.stderr) == summary_counts(python.stderr),
          f"{what}: summary {summary_counts(native.stderr)!r}, dgs scan's {summary_counts(python.stderr)!r}")
    theirs, ours = rows_of(python_csv, f"{what} (dgs scan)"), rows_of(native_csv, what)
    check(ours[:1] == theirs[:1] == [["path", "probability", "label", "error"]], f"{what}: header {ours[:1]}")
    check([r[0] for r in ours] == [r[0] for r in theirs],
          f"{what}: files {[r[0] for r in ours]}, dgs scan's {[r[0] for r in theirs]}")
    for mine, want in zip(ours[1:], theirs[1:], strict=False):
        path, probability, label, error = mine
        check(label == want[2], f"{what}: {path}: label {label!r}, dgs scan's {want[2]!r}")
        check(bool(error) == bool(want[3]), f"{what}: {path}: error {error!r}, dgs scan's {want[3]!r}")
        if error:
            check(error.startswith(path.lstrip("'") + ": ") or error.startswith(path + ": "),
                  f"{what}: the error names the file: {error!r}")
            if "symbolic link" in want[3]:  # discovery's own message, word for word
                check(error == want[3], f"{what}: {error!r}, dgs scan's {want[3]!r}")
            continue
        check(repr(float(probability)) == probability, f"{what}: {path}: {probability!r} is not Python's repr")
        tolerance = tolerance_of(path)
        check(abs(float(probability) - float(want[1])) <= tolerance,
              f"{what}: {path}: probability {probability}, dgs scan's {want[1]} (tolerance {tolerance})")


def main(dgs_detect: str, dgs_detect_test: str, fixtures: Path) -> None:
    expected = json.loads((fixtures / "expected.json").read_text())
    resized = {f"photos/{name}" for name, info in expected["files"].items() if info["resized"]}

    def tolerance_of(path: str) -> float:
        return expected["resized_tolerance" if path in resized else "tolerance"]

    work = fixtures / "dgs-detect"
    work.mkdir(exist_ok=True)
    for old in work.iterdir():
        old.unlink()

    # The folder, into files, for several packages and batch sizes.
    runs = [("clip", [], 32), ("patch", [], 1), ("patch-pad", [], 3), ("fixed", [], 5), ("clip", ["--hidden"], 4),
            ("clip", ["--no-recursive"], 2), ("clip", ["--follow-symlinks"], 32)]
    for key, flags, batch in runs:
        what = f"{key} {' '.join(flags)} --batch {batch}"
        model = fixtures / "packages" / expected["packages"][key]["file"]
        theirs, ours = work / f"python-{key}.csv", work / f"native-{key}.csv"
        for out in (theirs, ours):
            out.unlink(missing_ok=True)
        python = dgs_scan(["photos", "-m", str(model), "-o", str(theirs), "--batch-size", str(batch), *flags],
                          fixtures)
        native = detect(dgs_detect_test, [str(model), "photos", "-o", str(ours), "--batch", str(batch),
                                          "--backend", "test-mean", *flags], fixtures)
        check(ours.exists(), f"{what}: no output ({native.stderr.decode()})")
        if ours.exists() and theirs.exists():
            compare(python, native, theirs.read_bytes(), ours.read_bytes(), tolerance_of, what)
        check(f"results written to {ours}" in native.stderr.decode(), f"{what}: {native.stderr.decode()}")

    # Standard output, a file named on the command line whose name a spreadsheet takes for a formula.
    clip = str(fixtures / "packages" / "clip.dgs")
    for target in ("=SUM(A1).png", "comma, \"quoted\".jpeg", "not-an-image.jpg", "no such file.png"):
        python = dgs_scan([target, "-m", clip], fixtures / "photos")
        native = detect(dgs_detect_test, [clip, target, "--backend=test-mean"], fixtures / "photos")
        compare(python, native, python.stdout, native.stdout, lambda path: expected["tolerance"], f"stdout {target}")
    native = detect(dgs_detect_test, [clip, "=SUM(A1).png", "--backend", "test-mean"], fixtures / "photos")
    lines = native.stdout.decode().splitlines()
    check(len(lines) == 2 and lines[1].startswith("'=SUM(A1).png,"), f"neutralised: {native.stdout!r}")

    # An empty folder: a header, exit code 0, and a word about it.
    empty = work / "empty folder"
    empty.mkdir()
    native = detect(dgs_detect_test, [clip, str(empty), "--backend", "test-mean"], fixtures)
    check(native.returncode == 0 and native.stdout == b"path,probability,label,error\r\n",
          f"empty folder: {native.returncode} {native.stdout!r}")
    check(f"no image files found in {empty}" in native.stderr.decode(), f"empty folder: {native.stderr!r}")
    empty.rmdir()

    # Usage problems and models that cannot be used: exit code 2, "Error: ..." naming the problem.
    existing = work / "native-clip.csv"
    refusals = {
        "a missing model": ([str(fixtures / "packages" / "missing.dgs"), "photos"], "missing.dgs"),
        "a corrupt model": ([str(fixtures / "packages" / "corrupt.dgs"), "photos"], "corrupt.dgs"),
        "an existing output": ([clip, "photos", "-o", str(existing)], "already exists"),
        "an output that is not CSV": ([clip, "photos", "-o", str(work / "out.jsonl")], "must end in .csv"),
        "an output in a missing folder": ([clip, "photos", "-o", str(work / "no" / "out.csv")], "does not exist"),
        "batch 0": ([clip, "photos", "--batch", "0"], "--batch"),
        "an unknown option": ([clip, "photos", "--colour"], "--colour"),
        "a missing folder argument": ([clip], "Missing argument"),
        "an unknown precision": ([clip, "photos", "--precision", "fp17"], "fp17"),
        "a backend C++ lacks": ([clip, "photos", "--backend", "onnxruntime"], "Python SDK"),
    }
    for what, (args, says) in refusals.items():
        if "--backend" not in args:
            args = [*args, "--backend", "test-mean"]
        native = detect(dgs_detect_test, args, fixtures)
        stderr = native.stderr.decode()
        check(native.returncode == 2 and stderr.startswith("Error: ") and says in stderr,
              f"{what}: exit code {native.returncode}, {stderr!r} (expected 2 and {says!r})")
        check(native.stdout == b"", f"{what}: wrote {native.stdout!r}")

    # A chain of links longer than the kernel follows, thousands long: reported, as dgs scan reports it.
    with tempfile.TemporaryDirectory() as folder:
        chain = Path(folder) / "chain"
        chain.mkdir()
        (chain / "link0").symlink_to(Path(folder) / "outside.jpg")
        for i in range(1, 3000):
            (chain / f"link{i}").symlink_to(f"link{i - 1}")
        (chain / "a.jpg").symlink_to("link2999")
        python = dgs_scan([str(chain), "-m", clip], fixtures)
        native = detect(dgs_detect_test, [clip, str(chain), "--backend", "test-mean"], fixtures)
        compare(python, native, python.stdout, native.stdout, lambda path: expected["tolerance"], "a link chain")
        check("cannot be resolved" in native.stdout.decode(), f"a link chain: {native.stdout!r}")

    # The real dgs-detect: where it has no backend that runs (no TensorRT, or no GPU for it), exit code 2 saying
    # why; where it has one, the folder scanned as dgs scan scans it.
    native = detect(dgs_detect, [clip, "photos"], fixtures)
    stderr = native.stderr.decode()
    if native.returncode == 2:
        check(stderr.startswith("Error: no inference backend is available"),
              f"dgs-detect without a backend: exit code {native.returncode}, {stderr!r}")
        check("no TensorRT backend" in stderr or "tensorrt: " in stderr, f"says why TensorRT cannot run: {stderr!r}")
        check("no ONNX Runtime backend" in stderr and "Python SDK" in stderr, f"points to the Python SDK: {stderr!r}")
    else:
        python = dgs_scan(["photos", "-m", clip], fixtures)
        compare(python, native, python.stdout, native.stdout, tolerance_of, "dgs-detect with its own backend")

    if failures:
        sys.exit(f"{len(failures)} checks failed")
    print("dgs-detect: CSV, summary and exit codes as dgs scan's")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} <dgs-detect> <dgs-detect-test> <fixtures folder>")
    main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]), Path(sys.argv[3]).resolve())
