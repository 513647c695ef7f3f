"""Dense peak matrix-unit TFLOP/s of accelerators, looked up by JAX's `device_kind`, and MFU.

Figures are per chip (one `jax.Device`), dense (NVIDIA's data sheets quote bf16/TF32 "with
sparsity"; the dense figure is half of it), 1 multiply-add = 2 FLOPs. `float32` means what
JAX's default precision does with float32 matrix products: TF32 tensor cores on NVIDIA
Ampere and newer, one bfloat16 pass of the MXU on TPU (so there it equals the bf16 figure).
Under `jax.default_matmul_precision('highest')` float32 products run several MXU passes (TPU)
or on the CUDA cores (NVIDIA), far below these figures, so MFU against them would read low.

Sources (vendors' spec sheets, read 2026):
- H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/
  h100): bf16 1,979 / 1,513 / 1,671 and TF32 989 / 756 / 835 TFLOPS with sparsity; the NVIDIA
  H100 architecture white paper gives SXM5 dense as bf16 989.4, TF32 494.7.
- H200 SXM / NVL: NVIDIA H200 data sheet (nvidia.com/en-us/data-center/h200): bf16 1,979 /
  1,671, TF32 989 / 835 TFLOPS with sparsity; the same GH100 compute as H100 SXM / NVL.
- GH200: NVIDIA GH200 Grace Hopper data sheet: its GPU is an H100 SXM-class GH100 (bf16 1,979
  with sparsity).
- A100 (40 GB and 80 GB, SXM4 and PCIe): NVIDIA A100 data sheet (nvidia.com/en-us/data-center/
  a100): bf16 312, TF32 156 dense.
- TPU v4: cloud.google.com/tpu/docs/v4, peak compute per chip 275 TFLOPS (bf16).
- TPU v5e: cloud.google.com/tpu/docs/v5e, 197 TFLOPS (bf16) per chip.
- TPU v5p: cloud.google.com/tpu/docs/v5p, 459 TFLOPS (bf16) per chip.

JAX's device kinds for these (examples): 'NVIDIA H100 80GB HBM3' (SXM), 'NVIDIA H100 PCIe',
'NVIDIA H100 NVL', 'NVIDIA H200', 'NVIDIA GH200 480GB', 'NVIDIA A100-SXM4-40GB',
'NVIDIA A100-SXM4-80GB', 'NVIDIA A100 80GB PCIe', 'TPU v4', 'TPU v5 lite' (v5e), 'TPU v5'
(v5p; newer runtimes may say 'TPU v5p'). 'TPU v4 lite' (the v4i inference chip) is not v4.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """One accelerator: its name, the `device_kind` pattern and dense peak TFLOP/s by dtype.

    `kind_pattern`: a regular expression searched, case-insensitively, in `device_kind`.
    `bfloat16`, `float32`: dense TFLOP/s per chip (float32 at JAX's default precision).
    """

    name: str
    kind_pattern: str
    bfloat16: float
    float32: float


# Ordered: the first pattern that matches wins, so the specific names come first.
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("NVIDIA H100 PCIe", r"H100.*PCIe", 756.5, 378.0),
    DevicePeak("NVIDIA H100 NVL", r"H100.*NVL", 835.5, 417.5),
    DevicePeak("NVIDIA H200 NVL", r"H200.*NVL", 835.5, 417.5),
    DevicePeak("NVIDIA GH200", r"GH200", 989.4, 494.7),
    DevicePeak("NVIDIA H200 SXM", r"H200", 989.4, 494.7),
    DevicePeak("NVIDIA H100 SXM", r"H100", 989.4, 494.7),
    DevicePeak("NVIDIA A100", r"A100", 312.0, 156.0),
    DevicePeak("TPU v4", r"^TPU v4$", 275.0, 275.0),
    DevicePeak("TPU v5e", r"^TPU v5( lite|e)$", 197.0, 197.0),
    DevicePeak("TPU v5p", r"^TPU v5p?$", 459.0, 459.0),
)


def lookup(device_kind: str) -> DevicePeak | None:
    """The table row for `device_kind` (as `jax.devices()[0].device_kind`), None if unknown."""
    kind = device_kind.strip()
    for peak in PEAKS:
        if re.search(peak.kind_pattern, kind, flags=re.IGNORECASE):
            return peak
    return None


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of `device_kind` for computation dtype 'bfloat16' or 'float32';
    None for an unknown device (every CPU) or another dtype."""
    peak = lookup(device_kind)
    if peak is None or dtype not in ("bfloat16", "float32"):
        return None
    return getattr(peak, dtype)


def utilisation(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: (`flops_per_step` / `step_seconds`) / `peak` TFLOP/s, a fraction
    in [0, 1] for a plausible measurement; None when the peak is unknown."""
    if peak is None:
        return None
    if step_seconds <= 0 or peak <= 0:
        raise ValueError(f"step_seconds={step_seconds} and peak={peak} must be positive")
    return flops_per_step / step_seconds / (peak * 1e12)
