"""Log-mel spectrograms of 16 kHz mono waveforms with `tf.signal`.

The defaults give MBT's audio input: a 25 ms periodic Hamming window, a 10 ms hop (100 frames
per second), 128 mel bins on the HTK mel scale and `log(mel_power + log_offset)`. The STFT is
padded at the end (`pad_end=True`) so `n` samples give exactly `ceil(n / hop)` frames: 8 s at
16 kHz → 800 frames.

The mel filterbank is built here rather than with `tf.signal.linear_to_mel_weight_matrix`: that
one draws its triangles in the mel domain and zeroes the DC bin, whereas ours are triangles in
Hz between HTK-mel-spaced edges, unnormalised (peak 1) — the same filters as
`librosa.filters.mel(htk=True, norm=None)`, so results can be checked against librosa.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LogMelSettings:
    """How a waveform becomes a log-mel spectrogram.

    Attributes:
      sample_rate: waveform rate in Hz.
      num_mel_bins: mel bands in the output.
      window_ms: analysis window length in milliseconds (Hamming, periodic).
      hop_ms: frame step in milliseconds.
      fft_length: FFT size in samples (≥ window); 1024 by default so that no low mel band
        between 0 Hz and 8 kHz falls between two FFT bins (512 leaves one band empty).
      fmin: lower edge of the lowest mel band in Hz.
      fmax: upper edge of the highest mel band in Hz; None means sample_rate / 2.
      power: 2.0 for the power spectrum, 1.0 for the magnitude.
      log_offset: added before the natural log, keeps silence finite.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    window_ms: float = 25.0
    hop_ms: float = 10.0
    fft_length: int = 1024
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0
    log_offset: float = 1e-6

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    def num_frames(self, num_samples: int) -> int:
        """Spectrogram frames for `num_samples` samples (STFT padded at the end)."""
        return int(math.ceil(num_samples / self.hop_samples))

    def validate(self) -> None:
        upper = self.sample_rate / 2.0 if self.fmax is None else self.fmax
        if self.fft_length < self.window_samples:
            raise ValueError(
                f"fft_length={self.fft_length} is shorter than the window "
                f"({self.window_samples} samples = {self.window_ms} ms at {self.sample_rate} Hz)"
            )
        if not 0.0 <= self.fmin < upper <= self.sample_rate / 2.0:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, "
                f"fmax={self.fmax}, sample_rate={self.sample_rate}"
            )
        if self.power not in (1.0, 2.0):
            raise ValueError(f"power must be 1.0 (magnitude) or 2.0 (power), got {self.power}")
        if self.num_mel_bins < 1 or self.hop_samples < 1:
            raise ValueError(f"bad num_mel_bins={self.num_mel_bins} or hop_ms={self.hop_ms}")


def hz_to_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(settings: LogMelSettings) -> np.ndarray:
    """Triangular HTK mel filters, float32 `[fft_length // 2 + 1, num_mel_bins]`.

    Band m rises linearly (in Hz) from edge m to edge m+1 and falls to edge m+2, where the
    `num_mel_bins + 2` edges are equally spaced in mel between fmin and fmax. Peak value 1.
    """
    upper = settings.sample_rate / 2.0 if settings.fmax is None else settings.fmax
    edges_hz = mel_to_hz(
        np.linspace(hz_to_mel(settings.fmin), hz_to_mel(upper), settings.num_mel_bins + 2)
    )
    bin_hz = np.linspace(0.0, settings.sample_rate / 2.0, settings.fft_length // 2 + 1)
    lower, centre, top = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (top[None, :] - bin_hz[:, None]) / (top - centre)[None, :]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel_spectrogram(
    waveform: tf.Tensor, settings: LogMelSettings = LogMelSettings()
) -> tf.Tensor:
    """Log-mel spectrogram.

    Args:
      waveform: float `[..., samples]` in [-1, 1] at `settings.sample_rate`.
      settings: window, hop, FFT, mel and log parameters.

    Returns:
      float32 `[..., ceil(samples / hop), num_mel_bins]`, natural log of the mel energies.
    """
    settings.validate()
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    stft = tf.signal.stft(
        waveform,
        frame_length=settings.window_samples,
        frame_step=settings.hop_samples,
        fft_length=settings.fft_length,
        window_fn=tf.signal.hamming_window,
        pad_end=True,
    )
    if settings.power == 2.0:  # re² + im²: |z|² without the square root (hypot) of tf.abs
        spectrum = tf.square(tf.math.real(stft)) + tf.square(tf.math.imag(stft))
    else:
        spectrum = tf.abs(stft)
    mel = tf.tensordot(spectrum, tf.constant(mel_filterbank(settings)), axes=1)
    return tf.math.log(mel + settings.log_offset)


def normalize(spectrogram: tf.Tensor, mean: float, std: float) -> tf.Tensor:
    """(spectrogram - mean) / std, e.g. MBT's mean 1.102 and std 2.762."""
    if std <= 0:
        raise ValueError(f"spec_std must be > 0, got {std}")
    return (spectrogram - mean) / std
