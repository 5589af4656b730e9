#!/usr/bin/env python3
"""Write the CT test fixtures and their golden outputs under fixtures/.

The tests need real CT voxels that contain no patient data. The
TotalSegmentator 2.18.0 wheel on PyPI (Apache-2.0) contains a 1 mm CT brain atlas,
totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz, 202 x 202 x 179 int16 voxels
with the last axis axial. This script reads the atlas straight from the wheel (or
from the extracted .nii.gz), cuts the fixture volumes from it, and runs
tools/reference.py's pipeline on each golden case.

    pip download --no-deps totalsegmentator==2.18.0 -d /tmp/tsdl
    python tools/make_fixtures.py --wheel /tmp/tsdl/totalsegmentator-2.18.0-py3-none-any.whl

Written files (relative to --out):

    ct_brain_atlas_1mm.npz         the whole atlas
    input_file_example.npz         a 60 x 60 x 61 crop with brain and skull base
    golden/NAME.input.npz          small, long, bigendian, uint8 and constant
    golden/NAME.expected.npz       PyTorch reference output for NAME, logits included
    golden/atlas.expected.npz      PyTorch reference output for the whole atlas, masks and scores only

Every golden case also runs with ONNX Runtime, and the script prints the largest
logit difference between the two backends. Reruns with the same bundle, package
versions and thread count reproduce the same arrays, but not the same .npz bytes,
because numpy stores the write time in the zip entries.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

import reference

REPOSITORY = Path(__file__).resolve().parent.parent
ATLAS_MEMBER = "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz"
ATLAS_SHA256 = "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265"
ATLAS_SHAPE = (202, 202, 179)

# Non-contrast reference statistics. With window_sigmas 3 the window of the atlas
# statistics is 155.1 to 344.9, so only bone survives it. The tissue statistics give
# a window of -20 to 100 that covers brain tissue, so those cases exercise the
# network on varied input.
ATLAS_MEAN, ATLAS_VAR = 250.0, 1000.0
TISSUE_MEAN, TISSUE_VAR = 40.0, 400.0
UINT8_MEAN, UINT8_VAR = 100.0, 400.0


class FixtureError(Exception):
    """Missing or unexpected source data, with a message for the user."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the CT test fixtures and golden outputs from the TotalSegmentator CT brain atlas.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--wheel", type=Path, help="totalsegmentator-2.18.0-py3-none-any.whl, as fetched by pip download"
    )
    source.add_argument("--atlas", type=Path, help=f"the extracted {ATLAS_MEMBER}")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "fixtures", help="fixtures folder to write")
    parser.add_argument(
        "--bundle", type=Path, default=reference.DEFAULT_BUNDLE, help="model bundle for the golden outputs"
    )
    parser.add_argument(
        "--inputs-only", action="store_true", help="write the input files only, without running the networks"
    )
    parser.add_argument(
        "--skip-onnx-check",
        action="store_true",
        help="do not run the golden cases with ONNX Runtime for the backend comparison",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime")
    return parser.parse_args(argv)


def read_atlas(wheel: Path | None, atlas: Path | None) -> np.ndarray:
    """Return the atlas voxels as stored (int16) in C order, after checking the file's SHA-256.

    nibabel returns the voxels in Fortran order. Only the bigendian golden case keeps that order.
    """
    if wheel is not None:
        if not wheel.is_file():
            raise FixtureError(f"wheel not found: {wheel}")
        with zipfile.ZipFile(wheel) as archive:
            try:
                compressed = archive.read(ATLAS_MEMBER)
            except KeyError:
                raise FixtureError(f"{wheel} does not contain {ATLAS_MEMBER}; use totalsegmentator 2.18.0")
    else:
        if not atlas.is_file():
            raise FixtureError(f"atlas not found: {atlas}")
        compressed = atlas.read_bytes()

    digest = hashlib.sha256(compressed).hexdigest()
    if digest != ATLAS_SHA256:
        raise FixtureError(
            f"unexpected atlas SHA-256 {digest}, expected {ATLAS_SHA256}; "
            "the fixtures are defined on the atlas of totalsegmentator 2.18.0"
        )
    image = nib.Nifti1Image.from_bytes(gzip.decompress(compressed))
    voxels = np.asanyarray(image.dataobj)
    if voxels.shape != ATLAS_SHAPE or voxels.dtype != np.int16:
        raise FixtureError(f"unexpected atlas voxels {voxels.shape} {voxels.dtype}, expected {ATLAS_SHAPE} int16")
    return np.ascontiguousarray(voxels)


def scalar(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def one_element(value: float) -> np.ndarray:
    return np.asarray([value], dtype=np.float64)


def make_uint8_volume(atlas: np.ndarray) -> np.ndarray:
    """Map a brain tissue crop linearly from its own min..max onto 30..190 and round to uint8."""
    crop = atlas[85:117, 85:117, 80:92].astype(np.float64)
    scaled = 30.0 + (crop - crop.min()) / (crop.max() - crop.min()) * 160.0
    return np.ascontiguousarray(np.round(scaled).astype(np.uint8))


def make_long_volume(atlas: np.ndarray) -> np.ndarray:
    """Concatenate two side-by-side 132-row crops along H into 264 x 16 x 72 int16.

    The atlas is only 202 voxels along H, so the second crop (the next 16 columns)
    follows the first one along H, leaving an intensity seam at row 132.
    """
    first = atlas[38:170, 88:104, 50:122]
    second = atlas[38:170, 104:120, 50:122]
    return np.ascontiguousarray(np.concatenate([first, second], axis=0))


def golden_inputs(atlas: np.ndarray) -> dict[str, tuple[Callable[..., None], dict[str, np.ndarray]]]:
    """Return the golden input arrays by case name, with the numpy function that saves each."""
    return {
        # Shorter than both windows on every axis, float32 voxels.
        "small": (
            np.savez_compressed,
            {
                "volume": np.ascontiguousarray(atlas[80:120, 80:116, 80:100].astype(np.float32)),
                "non_mdc_mean": scalar(TISSUE_MEAN),
                "non_mdc_var": scalar(TISSUE_VAR),
            },
        ),
        # Longer than the 3-D window on H (264 > 256) and on D (72 > 64).
        "long": (
            np.savez_compressed,
            {
                "volume": make_long_volume(atlas),
                "non_mdc_mean": scalar(TISSUE_MEAN),
                "non_mdc_var": scalar(TISSUE_VAR),
            },
        ),
        # Big-endian Fortran-order voxels, uncompressed archive, statistics as 1-element 1-d arrays.
        "bigendian": (
            np.savez,
            {
                "volume": np.asfortranarray(atlas[70:118, 80:120, 55:85].astype(">i2")),
                "non_mdc_mean": one_element(ATLAS_MEAN),
                "non_mdc_var": one_element(ATLAS_VAR),
            },
        ),
        "uint8": (
            np.savez_compressed,
            {
                "volume": make_uint8_volume(atlas),
                "non_mdc_mean": scalar(UINT8_MEAN),
                "non_mdc_var": scalar(UINT8_VAR),
            },
        ),
        # Every voxel equal, so ScaleIntensity's constant-image rule applies.
        "constant": (
            np.savez_compressed,
            {
                "volume": np.full((20, 20, 10), 300, dtype=np.int16),
                "non_mdc_mean": scalar(ATLAS_MEAN),
                "non_mdc_var": scalar(ATLAS_VAR),
            },
        ),
    }


def write_inputs(atlas: np.ndarray, out: Path) -> list[str]:
    """Write the atlas, the example input and the golden inputs. Returns the golden case names."""
    (out / "golden").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "ct_brain_atlas_1mm.npz",
        volume=atlas,
        non_mdc_mean=scalar(ATLAS_MEAN),
        non_mdc_var=scalar(ATLAS_VAR),
    )
    # Brain tissue plus the skull base, whose bone is the only part inside the atlas window.
    np.savez_compressed(
        out / "input_file_example.npz",
        volume=np.ascontiguousarray(atlas[75:135, 100:160, 45:106]),
        non_mdc_mean=scalar(ATLAS_MEAN),
        non_mdc_var=scalar(ATLAS_VAR),
    )

    cases = golden_inputs(atlas)
    for name, (save, arrays) in cases.items():
        save(out / "golden" / f"{name}.input.npz", **arrays)
    return list(cases)


def compare_backends(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> str:
    """Describe how far the ONNX Runtime outputs are from the PyTorch outputs."""
    parts = []
    for key in ("logits_3d", "logits_2d"):
        parts.append(f"max |{key} diff| {np.max(np.abs(expected[key] - actual[key])):.3e}")
    for key in ("pred_3d", "pred_2d"):
        parts.append(f"{key} differs in {int(np.count_nonzero(expected[key] != actual[key]))} voxels")
    for key in ("thrombus_probability", "confidence"):
        parts.append(f"{key} diff {abs(float(expected[key]) - float(actual[key])):.2e}")
    return ", ".join(parts)


def describe(name: str, outputs: dict[str, np.ndarray], seconds: float) -> str:
    return (
        f"{name}: shape {outputs['pred_3d'].shape}, foreground pred_2d {int(outputs['pred_2d'].sum())} "
        f"pred_3d {int(outputs['pred_3d'].sum())}, thrombus_probability "
        f"{float(outputs['thrombus_probability']):.6f}, confidence {float(outputs['confidence']):.6f}, "
        f"{seconds:.1f} s"
    )


def write_golden(out: Path, names: list[str], bundle: Path, onnx_check: bool, threads: int) -> None:
    """Run the reference pipeline on every golden case and on the whole atlas."""
    inputs = [(name, out / "golden" / f"{name}.input.npz", False) for name in names]
    inputs.append(("atlas", out / "ct_brain_atlas_1mm.npz", True))

    for name, input_path, masks_only in inputs:
        started = time.perf_counter()
        outputs = reference.run_reference(input_path, bundle, use_onnx=False, threads=threads)
        seconds = time.perf_counter() - started
        reference.save_outputs(out / "golden" / f"{name}.expected.npz", outputs, masks_only)
        print(describe(name, outputs, seconds), flush=True)

        if onnx_check:
            onnx_outputs = reference.run_reference(input_path, bundle, use_onnx=True, threads=threads)
            print(f"{name}: onnxruntime vs pytorch: {compare_backends(outputs, onnx_outputs)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        atlas = read_atlas(args.wheel, args.atlas)
        names = write_inputs(atlas, args.out)
        if not args.inputs_only:
            write_golden(args.out, names, args.bundle, not args.skip_onnx_check, args.threads)
    except (FixtureError, reference.ReferenceInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    for path in sorted(args.out.rglob("*.npz")):
        print(f"{path.relative_to(args.out)}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
