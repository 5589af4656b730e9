#!/usr/bin/env python3
"""Export the 3-D and 2-D SegResNet networks to the ONNX model bundle that thrombseg loads.

thrombseg runs the networks through ONNX Runtime, but they are trained with MONAI and
PyTorch. This script bridges the two. It builds both MONAI SegResNet networks, loads
their training checkpoints (or seeds deterministic random weights for tests), exports
each to ONNX, checks ONNX Runtime against PyTorch on one full window, and writes a
bundle folder:

    model_3d.onnx, model_2d.onnx                        the networks for ONNX Runtime
    best_metric_model_3d.pth, best_metric_model_2d.pth  plain PyTorch state dicts
    bundle.json                                         settings, sizes and SHA-256 digests

Examples:

    python tools/export_models.py --seed 0 --out fixtures/models
    python tools/export_models.py --checkpoint-3d runs/best_metric_model_3d.pth \\
        --checkpoint-2d runs/best_metric_model_2d.pth --out models/v3 --version v3

The script exits with status 1 when ONNX Runtime differs from PyTorch by more than
--tolerance, and with status 2 on invalid arguments or unreadable checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from monai.networks.nets import SegResNet
from torch import nn

BUNDLE_FORMAT = 1
BUNDLE_NAME = "thrombseg-segresnet"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
ONNX_OPSET = 18
CHECK_SEED = 1234

# thrombseg reads the thrombus probability from channel 1, so the networks must
# have exactly one input channel (CT intensity) and two output channels.
IN_CHANNELS = 1
OUT_CHANNELS = 2

# Names of the files inside the bundle folder, per network.
FILE_NAMES = {
    "3d": {"onnx": "model_3d.onnx", "checkpoint": "best_metric_model_3d.pth"},
    "2d": {"onnx": "model_2d.onnx", "checkpoint": "best_metric_model_2d.pth"},
}


class ExportError(Exception):
    """Invalid input that stops the export, with a message for the user."""


class CheckFailed(Exception):
    """ONNX Runtime output differs from PyTorch output by more than the tolerance."""


def parse_size_list(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers such as '256,256,64'."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size list {text!r}: expected integers separated by commas")
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"invalid size list {text!r}: every size must be positive")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export the 3-D and 2-D MONAI SegResNet networks to an ONNX model bundle for thrombseg.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    weights = parser.add_argument_group("weights (give both checkpoints, or --seed)")
    weights.add_argument(
        "--checkpoint-3d",
        type=Path,
        help="3-D network checkpoint: a state dict as saved by MONAI training "
        "(best_metric_model_3d.pth), or a dict with a 'state_dict' or 'model' key",
    )
    weights.add_argument("--checkpoint-2d", type=Path, help="2-D network checkpoint, same formats as --checkpoint-3d")
    weights.add_argument(
        "--seed",
        type=int,
        help="use deterministic random weights: torch.manual_seed(SEED) before building each network",
    )

    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (created if missing)")
    parser.add_argument(
        "--version",
        help="bundle version string (default: 'seed-N' for --seed N, otherwise the checkpoint file stem "
        "followed by a short hash of both checkpoints)",
    )

    network = parser.add_argument_group("SegResNet architecture (shared by the 3-D and 2-D networks)")
    network.add_argument("--init-filters", type=int, default=8, help="output channels of the first convolution")
    network.add_argument(
        "--blocks-down",
        type=parse_size_list,
        default=[1, 2, 2, 4],
        help="residual blocks per encoder level, comma-separated",
    )
    network.add_argument(
        "--blocks-up",
        type=parse_size_list,
        default=[1, 1, 1],
        help="residual blocks per decoder level, comma-separated",
    )
    network.add_argument(
        "--dropout-prob",
        type=float,
        default=None,
        help="dropout probability after the first convolution (inactive in eval mode; default: no dropout layer)",
    )
    network.add_argument("--num-groups", type=int, default=8, help="group count of the GroupNorm layers")
    network.add_argument(
        "--upsample-mode",
        choices=["nontrainable", "deconv", "pixelshuffle"],
        default="nontrainable",
        help="decoder upsampling: linear interpolation, transposed convolution or subpixel convolution",
    )

    inference = parser.add_argument_group("inference settings recorded in bundle.json")
    inference.add_argument(
        "--window-sigmas",
        type=float,
        default=3.0,
        help="intensity window half-width in standard deviations of the non-contrast reference intensity",
    )
    inference.add_argument(
        "--overlap", type=float, default=0.25, help="sliding-window overlap fraction along each axis, in [0, 1)"
    )
    inference.add_argument(
        "--roi-3d", type=parse_size_list, default=[256, 256, 64], help="3-D window size H,W,D in voxels"
    )
    inference.add_argument("--roi-2d", type=parse_size_list, default=[256, 256], help="2-D window size H,W in pixels")
    inference.add_argument(
        "--batch-2d", type=int, default=16, help="axial slices per 2-D network run (sliding-window batch size)"
    )

    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest allowed absolute difference between ONNX Runtime and PyTorch outputs",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime")

    args = parser.parse_args(argv)

    has_checkpoints = args.checkpoint_3d is not None or args.checkpoint_2d is not None
    if has_checkpoints and args.seed is not None:
        parser.error("give either --checkpoint-3d/--checkpoint-2d or --seed, not both")
    if not has_checkpoints and args.seed is None:
        parser.error("missing weights: give --checkpoint-3d and --checkpoint-2d, or --seed N")
    if has_checkpoints and (args.checkpoint_3d is None or args.checkpoint_2d is None):
        parser.error("--checkpoint-3d and --checkpoint-2d must be given together")
    for checkpoint in (args.checkpoint_3d, args.checkpoint_2d):
        if checkpoint is not None and not checkpoint.is_file():
            parser.error(f"checkpoint not found: {checkpoint}")
    if len(args.roi_3d) != 3:
        parser.error(f"--roi-3d needs 3 sizes (H,W,D), got {len(args.roi_3d)}")
    if len(args.roi_2d) != 2:
        parser.error(f"--roi-2d needs 2 sizes (H,W), got {len(args.roi_2d)}")
    if not 0.0 <= args.overlap < 1.0:
        parser.error(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.window_sigmas <= 0.0:
        parser.error(f"--window-sigmas must be positive, got {args.window_sigmas}")
    if args.batch_2d <= 0:
        parser.error(f"--batch-2d must be positive, got {args.batch_2d}")
    if len(args.blocks_up) != len(args.blocks_down) - 1:
        parser.error(
            f"--blocks-up needs one entry fewer than --blocks-down, got {len(args.blocks_up)} and {len(args.blocks_down)}"
        )
    return args


def segresnet_arguments(args: argparse.Namespace, spatial_dims: int) -> dict[str, Any]:
    """Return every SegResNet constructor argument as JSON-compatible values.

    The deprecated arguments norm_name and num_groups are left out because `norm`
    replaces them. reference.py passes this dict back to SegResNet unchanged.
    """
    return {
        "spatial_dims": spatial_dims,
        "init_filters": args.init_filters,
        "in_channels": IN_CHANNELS,
        "out_channels": OUT_CHANNELS,
        "dropout_prob": args.dropout_prob,
        "act": ["RELU", {"inplace": True}],
        "norm": ["GROUP", {"num_groups": args.num_groups}],
        "use_conv_final": True,
        "blocks_down": list(args.blocks_down),
        "blocks_up": list(args.blocks_up),
        "upsample_mode": args.upsample_mode,
    }


def build_segresnet(arguments: dict[str, Any]) -> SegResNet:
    """Build a SegResNet from the JSON form of its constructor arguments."""
    kwargs = dict(arguments)
    kwargs["act"] = tuple(kwargs["act"])
    kwargs["norm"] = tuple(kwargs["norm"])
    kwargs["blocks_down"] = tuple(kwargs["blocks_down"])
    kwargs["blocks_up"] = tuple(kwargs["blocks_up"])
    return SegResNet(**kwargs)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a plain state-dict file or from a dict with a 'state_dict' or 'model' key."""
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"failed to read checkpoint {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ExportError(f"invalid checkpoint {path}: expected a dict, got {type(loaded).__name__}")

    for key in ("state_dict", "model"):
        if key in loaded and isinstance(loaded[key], dict):
            loaded = loaded[key]
            break

    if not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise ExportError(
            f"invalid checkpoint {path}: not a state dict (some values are not tensors), "
            "and there is no 'state_dict' or 'model' key"
        )
    # Checkpoints saved from nn.DataParallel prefix every key with 'module.'.
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return loaded


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ConvolutionFlopCounter:
    """Count the floating-point operations of the convolution layers during one forward pass.

    Only Conv and ConvTranspose layers are counted, as 2 operations per multiply-add.
    Normalisation, activations, additions, upsampling and biases are left out, so the
    total is a lower bound on the network's work. Counts are per batch element.
    """

    def __init__(self, model: nn.Module) -> None:
        self.flops = 0
        self._handles = []
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                self._handles.append(module.register_forward_hook(self._count_convolution))
            elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                self._handles.append(module.register_forward_hook(self._count_transposed_convolution))

    def _count_convolution(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Every output element takes in_channels/groups * kernel volume multiply-adds.
        output_elements = output.numel() // output.shape[0]
        kernel_volume = int(np.prod(module.kernel_size))
        self.flops += 2 * output_elements * (module.in_channels // module.groups) * kernel_volume

    def _count_transposed_convolution(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # A transposed convolution scatters every input element into out_channels/groups * kernel volume outputs.
        input_elements = inputs[0].numel() // inputs[0].shape[0]
        kernel_volume = int(np.prod(module.kernel_size))
        self.flops += 2 * input_elements * (module.out_channels // module.groups) * kernel_volume

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class AxisWiseGroupNorm(nn.Module):
    """GroupNorm that exports to ONNX as short, accurate reductions.

    PyTorch exports nn.GroupNorm as InstanceNormalization, which ONNX Runtime 1.31 evaluates
    with float32 sums over a whole group: 32 channels x 256 x 256 x 64 voxels in the 3-D
    network. On a zero-padded window the group variance is small and that sum's rounding
    error reaches 0.03 in the output logits, against 2e-5 for PyTorch (both measured against
    a float64 run). Taking the mean one axis at a time keeps every sum short, which brings
    ONNX Runtime to 2e-5 as well and runs no slower. The variance is computed in two passes,
    as the mean of squared deviations.

    It keeps the same `weight` and `bias` parameters as the GroupNorm it replaces.
    """

    def __init__(self, group_norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = group_norm.num_groups
        self.eps = group_norm.eps
        self.weight = group_norm.weight
        self.bias = group_norm.bias

    def _mean_over_group(self, grouped: torch.Tensor) -> torch.Tensor:
        # grouped is (N, groups, channels per group, *spatial); reduce from the last axis.
        for axis in range(grouped.dim() - 1, 1, -1):
            grouped = grouped.mean(dim=axis, keepdim=True)
        return grouped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        grouped = x.reshape([shape[0], self.num_groups, shape[1] // self.num_groups, *shape[2:]])
        deviation = grouped - self._mean_over_group(grouped)
        variance = self._mean_over_group(deviation * deviation)
        normalized = (deviation / torch.sqrt(variance + self.eps)).reshape(shape)
        affine_shape = [1, shape[1]] + [1] * (len(shape) - 2)
        return normalized * self.weight.reshape(affine_shape) + self.bias.reshape(affine_shape)


def with_axis_wise_group_norms(model: nn.Module) -> nn.Module:
    """Return a copy of `model` whose GroupNorm layers are AxisWiseGroupNorm, for export."""
    exported = copy.deepcopy(model)
    for parent in list(exported.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, AxisWiseGroupNorm(child))
    return exported


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, spatial_dims: int) -> None:
    """Export `model` to ONNX with dynamic batch and spatial axes."""
    # The TorchScript exporter is chosen on purpose (dynamo=False), so its deprecation warning is noise.
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    axes = {0: "batch", 2: "h", 3: "w"}
    if spatial_dims == 3:
        axes[4] = "d"
    torch.onnx.export(
        model,
        example,
        str(path),
        opset_version=ONNX_OPSET,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: dict(axes)},
    )


def check_onnx(
    model: nn.Module, onnx_path: Path, window: torch.Tensor, threads: int
) -> tuple[float, float]:
    """Run PyTorch and ONNX Runtime on `window`.

    Returns the largest absolute output difference and the convolution GFLOP of one window.
    """
    counter = ConvolutionFlopCounter(model)
    with torch.no_grad():
        expected = model(window).numpy()
    counter.remove()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: window.numpy()})[0]
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch output shape {expected.shape}")
    return float(np.max(np.abs(actual - expected))), counter.flops / 1e9


def default_version(args: argparse.Namespace) -> str:
    if args.seed is not None:
        return f"seed-{args.seed}"
    stem_3d, stem_2d = args.checkpoint_3d.stem, args.checkpoint_2d.stem
    # 'best_metric_model_3d' and 'best_metric_model_2d' share the stem 'best_metric_model'.
    prefix_length = 0
    while prefix_length < min(len(stem_3d), len(stem_2d)) and stem_3d[prefix_length] == stem_2d[prefix_length]:
        prefix_length += 1
    stem = stem_3d[:prefix_length].rstrip("_-.") or stem_3d
    combined = hashlib.sha256(
        (sha256_file(args.checkpoint_3d) + sha256_file(args.checkpoint_2d)).encode("ascii")
    ).hexdigest()
    return f"{stem}-{combined[:12]}"


def network_settings(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """Return the roi_size and batch_size recorded for network `key` ('3d' or '2d')."""
    if key == "3d":
        return {"spatial_dims": 3, "roi_size": list(args.roi_3d), "batch_size": 1}
    return {"spatial_dims": 2, "roi_size": list(args.roi_2d), "batch_size": args.batch_2d}


def export_network(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """Build, export and check one network, and return its bundle.json entry."""
    settings = network_settings(args, key)
    spatial_dims = settings["spatial_dims"]
    arguments = segresnet_arguments(args, spatial_dims)
    files = FILE_NAMES[key]

    if args.seed is not None:
        torch.manual_seed(args.seed)
        model = build_segresnet(arguments)
        state_dict = model.state_dict()
    else:
        checkpoint = args.checkpoint_3d if key == "3d" else args.checkpoint_2d
        model = build_segresnet(arguments)
        state_dict = load_checkpoint(checkpoint)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ExportError(
                f"checkpoint {checkpoint} does not match SegResNet({arguments}); "
                f"check --init-filters, --blocks-down, --blocks-up and --upsample-mode: {error}"
            ) from error
        state_dict = model.state_dict()
    model.eval()
    torch.save(state_dict, args.out / files["checkpoint"])

    # The traced example can be small because every spatial axis is exported as dynamic.
    # Each axis must stay divisible by 2 ** (levels - 1) for the decoder skip additions.
    factor = 2 ** (len(arguments["blocks_down"]) - 1)
    example = torch.zeros((1, IN_CHANNELS) + (4 * factor,) * spatial_dims)
    export_onnx(with_axis_wise_group_norms(model), example, args.out / files["onnx"], spatial_dims)

    # The check runs the network on two full windows in the [-1, 1] range that the
    # preprocessing produces: uniform noise, and a small block of noise inside zeros as a
    # volume smaller than the ROI is padded, which is where float32 normalisation is weakest.
    # The 2-D check uses a batch of 2 to exercise the batch axis.
    generator = torch.Generator().manual_seed(CHECK_SEED)
    batch = 1 if spatial_dims == 3 else 2
    roi = settings["roi_size"]
    noise = torch.rand((batch, IN_CHANNELS, *roi), generator=generator) * 2.0 - 1.0
    padded = torch.zeros_like(noise)
    block = tuple(slice(size // 2 - size // 8, size // 2 + size // 8) for size in roi)
    padded[(slice(None), slice(None)) + block] = noise[(slice(None), slice(None)) + block]

    max_difference = 0.0
    for label, window in (("noise", noise), ("padded", padded)):
        started = time.perf_counter()
        difference, gflop = check_onnx(model, args.out / files["onnx"], window, args.threads)
        elapsed = time.perf_counter() - started
        print(
            f"{key}: largest |onnxruntime - pytorch| = {difference:.3e} on {label} input {tuple(window.shape)} "
            f"({elapsed:.1f} s)",
            flush=True,
        )
        if not np.isfinite(difference):
            difference = float("inf")
        max_difference = max(max_difference, difference)
    if max_difference > args.tolerance:
        raise CheckFailed(f"{key}: ONNX Runtime differs from PyTorch by {max_difference:.3e} > {args.tolerance}")

    return {
        "onnx": files["onnx"],
        "checkpoint": files["checkpoint"],
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "spatial_dims": spatial_dims,
        "roi_size": settings["roi_size"],
        "overlap": args.overlap,
        "blend_mode": "constant",
        "batch_size": settings["batch_size"],
        "segresnet": arguments,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        # Convolution layers only, see ConvolutionFlopCounter.
        "gflop_per_window": round(gflop, 4),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    try:
        version = args.version or default_version(args)
        if args.seed is not None:
            source = f"deterministic random weights, torch.manual_seed({args.seed})"
        else:
            source = f"checkpoints {args.checkpoint_3d.name} (3-D) and {args.checkpoint_2d.name} (2-D)"
        networks = {key: export_network(args, key) for key in ("3d", "2d")}
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    file_names = [FILE_NAMES[key]["onnx"] for key in ("3d", "2d")]
    file_names += [FILE_NAMES[key]["checkpoint"] for key in ("3d", "2d")]
    bundle = {
        "format": BUNDLE_FORMAT,
        "name": BUNDLE_NAME,
        "version": version,
        "source": source,
        "window_sigmas": args.window_sigmas,
        "networks": networks,
        "sha256": {name: sha256_file(args.out / name) for name in file_names},
    }
    bundle_path = args.out / "bundle.json"
    bundle_path.write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {bundle_path} (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
