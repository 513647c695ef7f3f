"""Log-mel spectrogram (mbt.data.audio) against librosa, and SpecAugment (mbt.data.augment)."""

import librosa
import numpy as np
import pytest
import tensorflow as tf

from mbt.data import audio
from mbt.data import augment

SR = 16000


def _librosa_log_mel(waveform: np.ndarray, settings: audio.LogMelSettings, num_frames: int):
    """librosa's log-mel framed like tf.signal.stft(pad_end=True).

    tf frames x[t*hop : t*hop + win] and zero-pads each to the FFT length at the end; librosa
    (center=False) frames n_fft samples and centres the window in them. Magnitudes ignore the
    resulting shift, so delaying the signal by (n_fft - win) // 2 lines the two up.
    """
    win, hop, nfft = settings.window_samples, settings.hop_samples, settings.fft_length
    offset = (nfft - win) // 2
    padded = np.zeros(offset + (num_frames - 1) * hop + nfft, np.float32)
    padded[offset : offset + len(waveform)] = waveform
    mel = librosa.feature.melspectrogram(
        y=padded,
        sr=settings.sample_rate,
        n_fft=nfft,
        hop_length=hop,
        win_length=win,
        window="hamming",
        center=False,
        power=settings.power,
        n_mels=settings.num_mel_bins,
        fmin=settings.fmin,
        fmax=settings.fmax,
        htk=True,
        norm=None,
    )
    return np.log(mel.T[:num_frames] + settings.log_offset)


@pytest.mark.filterwarnings("ignore:Empty filters")
@pytest.mark.parametrize(
    "settings",
    [
        audio.LogMelSettings(),
        audio.LogMelSettings(fft_length=512, fmin=125.0, fmax=7500.0, power=1.0, log_offset=0.01),
    ],
)
def test_log_mel_matches_librosa(settings):
    rng = np.random.default_rng(0)
    t = np.arange(int(1.23 * SR)) / SR
    waveform = (
        0.05 * rng.standard_normal(t.size)
        + 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0, 1, t.size)
    ).astype(np.float32)
    ours = audio.log_mel_spectrogram(waveform, settings).numpy()
    assert ours.shape == (settings.num_frames(t.size), settings.num_mel_bins) == (123, 128)
    expected = _librosa_log_mel(waveform, settings, ours.shape[0])
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=0)


def test_filterbank_matches_librosa_and_has_no_empty_band():
    settings = audio.LogMelSettings()
    ours = audio.mel_filterbank(settings)
    theirs = librosa.filters.mel(
        sr=SR, n_fft=settings.fft_length, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None
    ).T
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.shape == (settings.fft_length // 2 + 1, 128)
    assert (ours.max(axis=0) > 0.5).all()


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 3100.0, 6000.0])
def test_pure_tone_peaks_at_its_mel_bin(frequency):
    settings = audio.LogMelSettings()
    t = np.arange(SR) / SR
    spec = audio.log_mel_spectrogram(0.5 * np.sin(2 * np.pi * frequency * t), settings).numpy()
    assert spec.shape == (100, 128)  # 100 frames per second
    centres = audio.mel_to_hz(np.linspace(audio.hz_to_mel(0.0), audio.hz_to_mel(8000.0), 130))[1:-1]
    expected_bin = int(np.argmin(np.abs(centres - frequency)))
    peaks = spec[:-3].argmax(axis=1)  # the last frames are zero-padded
    assert np.all(np.abs(peaks - expected_bin) <= 1), (peaks, expected_bin)
    assert np.bincount(peaks).argmax() == expected_bin


def test_frame_count_and_silence():
    settings = audio.LogMelSettings()
    spec = audio.log_mel_spectrogram(np.zeros([2, 8 * SR], np.float32), settings).numpy()
    assert spec.shape == (2, 800, 128)
    np.testing.assert_allclose(spec, np.log(settings.log_offset), rtol=1e-6)
    normalised = audio.normalize(tf.constant([1.102 + 2.762]), 1.102, 2.762).numpy()
    np.testing.assert_allclose(normalised, [1.0], rtol=1e-6)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="fft_length"):
        audio.log_mel_spectrogram(np.zeros(1000), audio.LogMelSettings(fft_length=256))
    with pytest.raises(ValueError, match="fmax"):
        audio.log_mel_spectrogram(np.zeros(1000), audio.LogMelSettings(fmax=9000.0))
    with pytest.raises(ValueError, match="spec_std"):
        audio.normalize(tf.zeros([3]), 0.0, 0.0)


def _masked_bands(mask_1d: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a boolean vector."""
    runs, length = [], 0
    for value in list(mask_1d) + [False]:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_spec_augment_masks_have_configured_counts_and_widths():
    params = augment.SpecAugment(
        num_freq_masks=1, max_freq_width=12, num_time_masks=2, max_time_width=20, mask_value=-5.0
    )
    spec = tf.ones([200, 64])
    fn = tf.function(lambda s: augment.spec_augment(spec, s, params))
    freq_widths, time_masked = [], []
    for i in range(150):
        out = fn(tf.constant([3, i])).numpy()
        assert set(np.unique(out)) <= {1.0, -5.0}
        masked = out == -5.0
        freq_rows = masked.all(axis=0)  # mel bins masked over all time
        time_rows = masked.all(axis=1)  # frames masked over all bins
        # Every masked cell lies in a masked frame or a masked bin.
        assert np.array_equal(masked, freq_rows[None, :] | time_rows[:, None])
        freq_bands = _masked_bands(freq_rows)
        assert len(freq_bands) <= 1 and all(w <= 12 for w in freq_bands)
        time_bands = _masked_bands(time_rows)
        assert sum(time_bands) <= 40 and all(w <= 40 for w in time_bands)
        freq_widths.append(sum(freq_bands))
        time_masked.append(sum(time_bands))
    assert max(freq_widths) == 12  # widths are drawn from {0, ..., max}
    assert 0 in freq_widths
    assert max(time_masked) > 20  # two masks
    assert np.array_equal(fn(tf.constant([3, 7])).numpy(), fn(tf.constant([3, 7])).numpy())


def test_spec_augment_off_when_counts_zero():
    params = augment.SpecAugment(num_freq_masks=0, num_time_masks=0)
    spec = tf.random.normal([50, 16])
    assert np.array_equal(
        augment.spec_augment(spec, tf.constant([1, 2]), params).numpy(), spec.numpy()
    )
