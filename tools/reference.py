#!/usr/bin/env python3
"""Run the thrombseg segmentation pipeline with MONAI itself to produce golden outputs.

thrombseg reimplements the MONAI preprocessing and sliding-window inference in Rust.
This script runs the original MONAI 1.6.1 code on an input file so that the Rust
results can be compared against it. The pipeline is:

    volume (H, W, D) -> float32 -> ScaleIntensityRange to [0, 255] over
    mean +- k * sqrt(var), clipped -> MedianSmooth(radius=1) -> ScaleIntensity to [-1, 1]
    -> 3-D sliding-window inference on the whole volume
    -> 2-D sliding-window inference on the axial slices (last axis) as one batch
    -> argmax masks, mean thrombus probability and mean confidence of the 3-D network

The input is an .npz file with `volume` (3-D, any integer or float dtype),
`non_mdc_mean` and `non_mdc_var` (one element each). k is the bundle's window_sigmas.
The networks run in PyTorch from the bundle's .pth state dicts, or with --onnx in
ONNX Runtime from the bundle's .onnx files.

Output .npz keys: pred_2d and pred_3d (uint8, H x W x D), logits_2d and logits_3d
(float32, 2 x H x W x D, left out with --masks-only), and thrombus_probability and
confidence (float32, 0-d).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import set_track_meta
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet
from monai.transforms import MedianSmooth, ScaleIntensity, ScaleIntensityRange

# Run as `python tools/reference.py`, so the sibling module is importable by name.
from export_models import sha256_file

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "fixtures" / "models"
SUPPORTED_BUNDLE_FORMAT = 1

Predictor = Callable[[torch.Tensor], torch.Tensor]


class ReferenceInputError(Exception):
    """Invalid input or bundle, with a message for the user."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the thrombseg pipeline with MONAI to produce golden outputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", type=Path, help=".npz file with volume, non_mdc_mean and non_mdc_var")
    parser.add_argument("output", type=Path, help=".npz file to write (compressed)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle folder with bundle.json")
    parser.add_argument(
        "--masks-only", action="store_true", help="leave logits_2d and logits_3d out of the output file"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="run the networks with ONNX Runtime on the bundle's .onnx files instead of PyTorch",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime")
    return parser.parse_args(argv)


def load_bundle(bundle_dir: Path) -> dict[str, Any]:
    """Read bundle.json and check the SHA-256 digest of every file it lists."""
    manifest_path = bundle_dir / "bundle.json"
    if not manifest_path.is_file():
        raise ReferenceInputError(f"bundle manifest not found: {manifest_path}")
    bundle = json.loads(manifest_path.read_text(encoding="utf-8"))
    if bundle.get("format") != SUPPORTED_BUNDLE_FORMAT:
        raise ReferenceInputError(
            f"unsupported bundle format {bundle.get('format')!r} in {manifest_path}, expected {SUPPORTED_BUNDLE_FORMAT}"
        )
    for name, expected in bundle["sha256"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise ReferenceInputError(f"bundle file not found: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise ReferenceInputError(f"SHA-256 mismatch for {path}: bundle.json lists {expected}, file has {actual}")
    return bundle


def read_scalar(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> float:
    """Read a statistic stored as a 0-d or any other one-element array."""
    if key not in archive.files:
        raise ReferenceInputError(f"missing array {key!r} in {path} (found {sorted(archive.files)})")
    values = np.asarray(archive[key]).reshape(-1)
    if values.size != 1:
        raise ReferenceInputError(f"invalid {key!r} in {path}: expected exactly one element, got {values.size}")
    if values.dtype.kind not in "iuf":
        raise ReferenceInputError(f"invalid {key!r} in {path}: expected a number, got dtype {values.dtype}")
    value = float(values[0])
    if not math.isfinite(value):
        raise ReferenceInputError(f"invalid {key!r} in {path}: {value} is not finite")
    return value


def load_input(path: Path) -> tuple[np.ndarray, float, float]:
    """Load the volume and the non-contrast mean and variance from an input .npz file."""
    if not path.is_file():
        raise ReferenceInputError(f"input file not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        if "volume" not in archive.files:
            raise ReferenceInputError(f"missing array 'volume' in {path} (found {sorted(archive.files)})")
        volume = archive["volume"]
        mean = read_scalar(archive, "non_mdc_mean", path)
        variance = read_scalar(archive, "non_mdc_var", path)
    if volume.ndim != 3:
        raise ReferenceInputError(f"invalid volume in {path}: expected 3 axes (H, W, D), got shape {volume.shape}")
    if volume.size == 0:
        raise ReferenceInputError(f"invalid volume in {path}: shape {volume.shape} is empty")
    if volume.dtype.kind not in "iuf":
        raise ReferenceInputError(f"invalid volume in {path}: expected integer or float voxels, got dtype {volume.dtype}")
    if variance < 0.0:
        raise ReferenceInputError(f"invalid 'non_mdc_var' in {path}: {variance} is negative")
    return volume, mean, variance


def preprocess(volume: np.ndarray, mean: float, variance: float, window_sigmas: float) -> torch.Tensor:
    """Window, median-filter and rescale the volume. Returns a (1, 1, H, W, D) float32 tensor.

    The voxels are converted to float32 before any arithmetic, so integer inputs are
    exact and float64 inputs are rounded once.
    """
    image = volume.astype(np.float32)[None]
    sigma = math.sqrt(variance)
    lower = mean - window_sigmas * sigma
    upper = mean + window_sigmas * sigma
    x = ScaleIntensityRange(a_min=lower, a_max=upper, b_min=0.0, b_max=255.0, clip=True)(image)
    x = MedianSmooth(radius=1)(x)
    x = ScaleIntensity(minv=-1.0, maxv=1.0)(x)
    return torch.as_tensor(x, dtype=torch.float32)[None]


def torch_predictor(network: dict[str, Any], bundle_dir: Path) -> Predictor:
    """Build the SegResNet described by a bundle.json network entry and load its state dict."""
    arguments = dict(network["segresnet"])
    for key in ("act", "norm", "blocks_down", "blocks_up"):
        if isinstance(arguments.get(key), list):
            arguments[key] = tuple(arguments[key])
    model = SegResNet(**arguments)
    state_dict = torch.load(bundle_dir / network["checkpoint"], map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def onnx_predictor(network: dict[str, Any], bundle_dir: Path, threads: int) -> Predictor:
    """Wrap an ONNX Runtime session on the network's .onnx file as a tensor-to-tensor function."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(bundle_dir / network["onnx"]), options, providers=["CPUExecutionProvider"]
    )
    input_name, output_name = network["input_name"], network["output_name"]

    def predict(window: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(window.numpy(), dtype=np.float32)
        return torch.from_numpy(session.run([output_name], {input_name: batch})[0])

    return predict


def infer(
    image: torch.Tensor, bundle: dict[str, Any], predictor_3d: Predictor, predictor_2d: Predictor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both networks over `image` (1, 1, H, W, D). Returns logits_3d and logits_2d, each (2, H, W, D)."""
    network_3d, network_2d = bundle["networks"]["3d"], bundle["networks"]["2d"]
    with torch.no_grad():
        logits_3d = sliding_window_inference(
            image,
            network_3d["roi_size"],
            sw_batch_size=network_3d["batch_size"],
            predictor=predictor_3d,
            overlap=network_3d["overlap"],
            mode=network_3d["blend_mode"],
            padding_mode="constant",
            cval=0.0,
        )[0]

        # The 2-D network takes the axial slices (last axis) as one batch of D images.
        slices = image[0].permute(3, 0, 1, 2)
        logits_2d = sliding_window_inference(
            slices,
            network_2d["roi_size"],
            sw_batch_size=network_2d["batch_size"],
            predictor=predictor_2d,
            overlap=network_2d["overlap"],
            mode=network_2d["blend_mode"],
            padding_mode="constant",
            cval=0.0,
        ).permute(1, 2, 3, 0)
    return logits_3d, logits_2d


def summarize(logits_3d: torch.Tensor, logits_2d: torch.Tensor) -> dict[str, np.ndarray]:
    """Return the masks and the two scores computed from the logits."""
    probabilities = torch.softmax(logits_3d, dim=0)
    return {
        "pred_2d": torch.argmax(logits_2d, dim=0).numpy().astype(np.uint8),
        "pred_3d": torch.argmax(logits_3d, dim=0).numpy().astype(np.uint8),
        "thrombus_probability": np.asarray(probabilities[1].mean().item(), dtype=np.float32),
        "confidence": np.asarray(probabilities.max(dim=0).values.mean().item(), dtype=np.float32),
    }


def run_reference(
    input_path: Path, bundle_dir: Path, use_onnx: bool = False, threads: int = 2
) -> dict[str, np.ndarray]:
    """Run the whole pipeline on one input file and return every output array, logits included."""
    torch.set_num_threads(threads)
    # Plain tensors instead of MetaTensors: the values are the same, and no metadata is needed.
    set_track_meta(False)
    bundle = load_bundle(bundle_dir)
    volume, mean, variance = load_input(input_path)

    if use_onnx:
        predictor_3d = onnx_predictor(bundle["networks"]["3d"], bundle_dir, threads)
        predictor_2d = onnx_predictor(bundle["networks"]["2d"], bundle_dir, threads)
    else:
        predictor_3d = torch_predictor(bundle["networks"]["3d"], bundle_dir)
        predictor_2d = torch_predictor(bundle["networks"]["2d"], bundle_dir)

    image = preprocess(volume, mean, variance, float(bundle["window_sigmas"]))
    logits_3d, logits_2d = infer(image, bundle, predictor_3d, predictor_2d)

    outputs = summarize(logits_3d, logits_2d)
    outputs["logits_2d"] = logits_2d.contiguous().numpy().astype(np.float32)
    outputs["logits_3d"] = logits_3d.contiguous().numpy().astype(np.float32)
    return outputs


def save_outputs(path: Path, outputs: dict[str, np.ndarray], masks_only: bool) -> None:
    keys = ["pred_2d", "pred_3d", "thrombus_probability", "confidence"]
    if not masks_only:
        keys += ["logits_2d", "logits_3d"]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{key: outputs[key] for key in keys})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        outputs = run_reference(args.input, args.bundle, use_onnx=args.onnx, threads=args.threads)
    except ReferenceInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save_outputs(args.output, outputs, args.masks_only)
    elapsed = time.perf_counter() - started

    backend = "onnxruntime" if args.onnx else "pytorch"
    print(
        f"{args.input.name}: shape {outputs['pred_3d'].shape}, foreground voxels pred_2d "
        f"{int(outputs['pred_2d'].sum())} pred_3d {int(outputs['pred_3d'].sum())}, "
        f"thrombus_probability {float(outputs['thrombus_probability']):.6f}, "
        f"confidence {float(outputs['confidence']):.6f}, {backend}, {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
