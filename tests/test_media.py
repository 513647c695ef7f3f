"""Round trips through real H.264/HEVC + AAC mp4 and wav files written and read with PyAV."""

import os

import numpy as np
import pytest

from mbt.data import media

HEIGHT, WIDTH = 64, 86
SECONDS = 3.0
SAMPLE_RATE = 44100  # written rate; reads resample to 16 kHz
TONE_ONSET_S = 1.3
TONE_HZ = 1000.0


def level(index):
    """Brightness that encodes a frame index (steps of 8 survive compression)."""
    return 8 + 8 * (index % 28)


def make_frames(fps):
    """Top half: grey at level(i); bottom-left pure red, bottom-right pure blue."""
    count = int(round(SECONDS * fps))
    frames = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(count):
        frames[i, : HEIGHT // 2] = level(i)
    frames[:, HEIGHT // 2 :, : WIDTH // 2] = (220, 20, 20)
    frames[:, HEIGHT // 2 :, WIDTH // 2 :] = (20, 20, 220)
    return frames


def make_audio():
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
    return np.where(t >= TONE_ONSET_S, tone, 0.0).astype(np.float32)


def onset_s(audio, sample_rate, threshold=0.1):
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    assert loud.size, "no tone found"
    return loud[0] / sample_rate


@pytest.fixture(
    scope="module", params=[("h264", 29.97), ("hevc", 50.0)], ids=["h264-29.97", "hevc-50"]
)
def clip(request, tmp_path_factory):
    codec, fps = request.param
    path = str(tmp_path_factory.mktemp("media") / f"clip_{codec}.mp4")
    media.write_clip(path, make_frames(fps), fps, make_audio(), SAMPLE_RATE, codec)
    return path, codec, fps


def test_probe(clip):
    path, codec, fps = clip
    info = media.probe(path)
    assert info.has_video and info.has_audio
    assert info.video_codec == codec
    assert info.fps == pytest.approx(fps, abs=1e-3)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.audio_sample_rate == SAMPLE_RATE
    assert info.duration_s == pytest.approx(SECONDS, abs=0.05)


def test_all_frames_at_native_rate(clip):
    path, _, fps = clip
    frames = media.read_frames(path, 0.0, SECONDS, fps=fps, short_side=None)
    assert frames.dtype == np.uint8
    assert frames.shape == (int(round(SECONDS * fps)), HEIGHT, WIDTH, 3)
    grey = frames[:, 4 : HEIGHT // 2 - 4, :, :].mean(axis=(1, 2, 3))
    expected = np.array([level(i) for i in range(len(frames))])
    np.testing.assert_allclose(grey, expected, atol=3)
    # Colours roughly preserved (yuv420p round trip), away from the chroma edge.
    red = frames[:, -20:-4, 4:30].mean(axis=(0, 1, 2))
    blue = frames[:, -20:-4, -30:-4].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(red, (220, 20, 20), atol=12)
    np.testing.assert_allclose(blue, (20, 20, 220), atol=12)


@pytest.mark.parametrize("start_s,want_fps", [(1.713, None), (2.02, 10.0), (0.456, 12.5)])
def test_seek_picks_nearest_frame(clip, start_s, want_fps):
    path, _, fps = clip
    want_fps = want_fps or fps
    frames = media.read_frames(path, start_s, start_s + 0.64, fps=want_fps, short_side=None)
    assert len(frames) == round(0.64 * want_fps)
    targets = start_s + np.arange(len(frames)) / want_fps
    expected = np.array([level(int(round(t * fps))) for t in targets])
    grey = frames[:, 4 : HEIGHT // 2 - 4].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(grey, expected, atol=3)


def test_resize_and_end_beyond_file(clip):
    path, _, fps = clip
    frames = media.read_frames(path, 2.5, 4.5, fps=10.0, short_side=32)
    # 64x86 scaled by 1/2 gives 43 -> the even 44; the last frame is shown until
    # count / fps (3.0 s at 50 fps, 3.003 s at 29.97): targets 2.5, 2.6, ... before that.
    file_end_s = int(round(SECONDS * fps)) / fps
    expected = int(np.sum(2.5 + np.arange(20) / 10.0 < file_end_s))
    assert expected in (5, 6)
    assert frames.shape == (expected, 32, 44, 3)
    assert media.read_frames(path, 3.5, 4.0, fps=10.0).shape[0] == 0


def test_audio_length_is_exact(clip):
    path = clip[0]
    for start_s, end_s in [(0.0, SECONDS), (0.123, 1.0771), (2.5, 4.0), (1.0, 1.0)]:
        audio = media.read_audio(path, start_s, end_s, sample_rate=16000)
        assert audio.dtype == np.float32
        assert audio.shape == (int(round((end_s - start_s) * 16000)),)
        assert np.all(np.abs(audio) <= 1.0)
    tail = media.read_audio(path, 2.5, 4.0, sample_rate=16000)
    assert np.abs(tail[: 16000 // 3]).max() > 0.3  # tone until the end of the file ...
    assert np.abs(tail[int(0.52 * 16000) :]).max() == 0.0  # ... then zero padding, no AAC tail


@pytest.mark.parametrize("start_s", [0.4, 1.0])
def test_tone_onset_survives_aac(clip, start_s):
    audio = media.read_audio(clip[0], start_s, start_s + 1.0, sample_rate=16000)
    assert onset_s(audio, 16000) + start_s == pytest.approx(TONE_ONSET_S, abs=0.025)
    # The tone itself: the dominant frequency of the decoded second half.
    spectrum = np.abs(np.fft.rfft(audio[-8000:]))
    assert np.fft.rfftfreq(8000, 1 / 16000)[spectrum.argmax()] == pytest.approx(TONE_HZ, abs=4)


def test_wav_round_trip(tmp_path):
    path = str(tmp_path / "tone.wav")
    stereo = np.stack([make_audio(), make_audio()], axis=1)
    media.write_wav(path, stereo, SAMPLE_RATE)
    info = media.probe(path)
    assert (info.has_video, info.has_audio, info.audio_sample_rate) == (False, True, SAMPLE_RATE)
    audio = media.read_audio(path, 1.0, 2.0, sample_rate=16000)
    assert audio.shape == (16000,)
    assert onset_s(audio, 16000) + 1.0 == pytest.approx(TONE_ONSET_S, abs=0.005)
    with pytest.raises(media.MediaError, match="no video stream.*tone.wav"):
        media.read_frames(path, 0.0, 1.0)


def test_fractional_rates_are_exact(tmp_path):
    path = str(tmp_path / "ntsc.mp4")
    media.write_clip(path, make_frames(59.94)[:60], 59.94, None)
    info = media.probe(path)
    assert info.fps == pytest.approx(60000 / 1001, rel=1e-6)
    assert not info.has_audio
    with pytest.raises(media.NoAudioStreamError, match="ntsc.mp4"):
        media.read_audio(path, 0.0, 1.0)


def test_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(media.MediaError, match="missing.mp4"):
        media.probe(missing)
    with pytest.raises(media.MediaError, match="missing.mp4"):
        media.read_frames(missing, 0.0, 1.0)
    garbage = str(tmp_path / "garbage.mp4")
    with open(garbage, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for read in (
        media.probe,
        lambda p: media.read_frames(p, 0, 1),
        lambda p: media.read_audio(p, 0, 1),
    ):
        with pytest.raises(media.MediaError, match="garbage.mp4") as raised:
            read(garbage)
        assert not isinstance(raised.value, media.NoAudioStreamError)


def test_write_clip_rejects_bad_input(tmp_path):
    path = str(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="even"):
        media.write_clip(path, np.zeros((2, 63, 64, 3), np.uint8), 25.0, None)
    with pytest.raises(ValueError, match="uint8"):
        media.write_clip(path, np.zeros((2, 64, 64, 3), np.float32), 25.0, None)
    with pytest.raises(ValueError, match="video_codec"):
        media.write_clip(path, np.zeros((2, 64, 64, 3), np.uint8), 25.0, None, video_codec="vp9")
    assert not os.path.exists(path)  # validated before anything is written


def test_output_size_keeps_aspect_even():
    assert media._output_size(1920, 1080, 256) == (456, 256)
    assert media._output_size(1080, 1920, 256) == (256, 456)
    assert media._output_size(86, 64, None) == (86, 64)
    assert media._output_size(640, 360, 32) == (56, 32)


def test_video_starting_after_audio_keeps_sync(tmp_path):
    """Times count from the file's start (FFmpeg's container start), shared by both
    streams: a video stream that starts 0.2 s late is not shifted back to 0."""
    import fractions

    import av

    path = str(tmp_path / "late_video.mp4")
    with av.open(path, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(
                np.full((64, 64, 3), level(i), np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = i + 5, fractions.Fraction(1, 25)  # starts at 0.2 s
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        t = np.arange(3 * 16000) / 16000
        wave = np.where(t >= TONE_ONSET_S, 0.5 * np.sin(2 * np.pi * TONE_HZ * t), 0.0)
        for lo in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(
                wave[None, lo : lo + 1024].astype(np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, lo
            frame.time_base = fractions.Fraction(1, 16000)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    frames = media.read_frames(path, 0.0, 1.0, fps=25.0, short_side=None)
    grey = frames.mean(axis=(1, 2, 3))
    expected = [level(max(0, k - 5)) for k in range(25)]  # before 0.2 s: the first frame
    np.testing.assert_allclose(grey, expected, atol=3)
    sound = media.read_audio(path, 1.0, 2.0)
    assert onset_s(sound, 16000) + 1.0 == pytest.approx(TONE_ONSET_S, abs=0.025)
