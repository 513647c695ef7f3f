"""The accelerator peak table (`mbt.tools.device_peaks`) and the MFU arithmetic."""

import pytest

from mbt.tools import bench
from mbt.tools import device_peaks

# device_kind strings as JAX reports them → (dense bf16, float32-default) TFLOP/s per chip.
KNOWN = {
    "NVIDIA H100 80GB HBM3": (989.4, 494.7),
    "NVIDIA H100 PCIe": (756.5, 378.0),
    "NVIDIA H100 NVL": (835.5, 417.5),
    "NVIDIA H200": (989.4, 494.7),
    "NVIDIA H200 NVL": (835.5, 417.5),
    "NVIDIA GH200 480GB": (989.4, 494.7),
    "NVIDIA A100-SXM4-40GB": (312.0, 156.0),
    "NVIDIA A100-SXM4-80GB": (312.0, 156.0),
    "NVIDIA A100 80GB PCIe": (312.0, 156.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0),
    "TPU v5": (459.0, 459.0),
    "TPU v5p": (459.0, 459.0),
}
UNKNOWN = ("cpu", "TPU v4 lite", "TPU v3", "TPU v6 lite", "Tesla V100-SXM2-16GB", "NVIDIA L4")


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_known_device_kinds_give_their_dense_peaks(kind):
    bf16, fp32 = KNOWN[kind]
    assert device_peaks.peak_tflops(kind, "bfloat16") == bf16
    assert device_peaks.peak_tflops(kind, "float32") == fp32
    assert device_peaks.peak_tflops(kind.lower(), "bfloat16") == bf16  # case-insensitive
    assert device_peaks.peak_tflops(kind, "float16") is None  # no figure for other dtypes


def test_unknown_device_kinds_have_no_peak():
    for kind in UNKNOWN:
        assert device_peaks.lookup(kind) is None, kind
        assert device_peaks.peak_tflops(kind, "bfloat16") is None, kind


def test_every_row_is_reachable_under_its_own_name():
    # A general pattern listed before a specific one would shadow it.
    for row in device_peaks.PEAKS:
        assert device_peaks.lookup(row.name) is row, row.name
        ratio = row.float32 / row.bfloat16
        expected = 1.0 if row.name.startswith("TPU") else 0.5  # TF32 is half bf16 on NVIDIA
        assert ratio == pytest.approx(expected, rel=2e-3), row.name


def test_mfu_is_model_flops_per_second_over_the_peak():
    # MBT-B/16 at batch 8: 489.1 G multiply-adds per example, 3 × 2 FLOPs each per train step.
    flops = bench.step_flops(489_100_000_000, 8, train=True)
    assert flops == 3 * bench.step_flops(489_100_000_000, 8, train=False) == 23_476_800_000_000
    assert device_peaks.utilisation(flops, 0.1, 989.4) == pytest.approx(0.23728, abs=1e-5)
    assert device_peaks.utilisation(989.4e12, 2.0, 989.4) == pytest.approx(0.5)
    assert device_peaks.utilisation(flops, 0.1, None) is None
    with pytest.raises(ValueError, match="step_seconds=0"):
        device_peaks.utilisation(flops, 0, 989.4)
