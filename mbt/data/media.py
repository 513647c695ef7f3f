"""Read and write mp4 / wav with PyAV (its bundled FFmpeg; no `ffmpeg` binary, no TensorFlow).

- `probe(path)`: what a file holds (`MediaInfo`).
- `read_frames(path, start_s, end_s, fps, short_side)`: uint8 RGB frames `[T, H, W, 3]` sampled
  at `fps` by presentation timestamp, times relative to the start of the file.
- `read_audio(path, start_s, end_s, sample_rate)`: float32 mono waveform `[samples]` in [-1, 1].
- `write_clip(...)` / `write_wav(...)`: H.264 or HEVC mp4 with AAC audio / 16-bit PCM wav.

Every failure to open or decode a file raises `MediaError` (or its subclass
`NoAudioStreamError`) whose message names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import os
import wave
from collections.abc import Iterator
from typing import cast

import av
import numpy as np

# Seek this far before the first wanted time: demuxers may land a little after the
# requested keyframe, and AAC needs the previous frame to reconstruct its first samples.
_VIDEO_SEEK_MARGIN_S = 0.1
_AUDIO_SEEK_MARGIN_S = 0.25
_VIDEO_CODECS = {"h264": "libx264", "hevc": "libx265"}


class MediaError(Exception):
    """A media file is missing, not a media file, or lacks what was asked of it."""


class NoAudioStreamError(MediaError):
    """The file has no audio stream."""


@dataclasses.dataclass
class MediaInfo:
    """What `probe` found. Durations in seconds; `fps` is the video's average frame rate."""

    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float | None
    width: int | None
    height: int | None
    audio_sample_rate: int | None
    video_codec: str | None


@contextlib.contextmanager
def _open(path) -> Iterator[av.container.InputContainer]:
    """The opened container of a local file, or of a URL-style path (`gs://...`) read through
    `tf.io.gfile` (TensorFlow is imported only then)."""
    path = os.fspath(path)
    source = None
    if "://" in path:
        import tensorflow as tf  # only for files on other filesystems

        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            source = tf.io.gfile.GFile(path, "rb")
    elif os.path.isfile(path):
        source = path
    if source is None:
        raise MediaError(f"media file not found: {path}")
    try:
        try:
            container = av.open(source, mode="r")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise MediaError(f"cannot open media file {path}: {e}") from e
        with container:
            yield container
    finally:
        if not isinstance(source, str):
            source.close()


def _stream_start_s(stream) -> float:
    """Presentation time of the stream's first sample, seconds (0 for most files)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _file_start_s(container) -> float:
    """Presentation time that counts as 0 s: the earliest start of any stream, as FFmpeg
    defines it. Shared by audio and video so that both stay in sync."""
    if container.start_time is None:
        return 0.0
    return container.start_time / av.time_base


def probe(path) -> MediaInfo:
    """Streams, duration and video geometry of a media file."""
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError(f"no video or audio stream in {os.fspath(path)}")
        duration_s = 0.0
        if container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            for stream in (video, audio):
                if (
                    stream is not None
                    and stream.duration is not None
                    and stream.time_base is not None
                ):
                    duration_s = max(duration_s, float(stream.duration * stream.time_base))
        fps = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            fps = float(rate) if rate else None
        return MediaInfo(
            duration_s=float(duration_s),
            has_video=video is not None,
            has_audio=audio is not None,
            fps=fps,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            video_codec=video.codec_context.name if video is not None else None,
        )


def _round_count(count: float) -> int:
    """round(), after dropping float noise (0.6 * 12.5 must count as 7.5, not 7.4999...)."""
    return int(round(round(count, 6)))


def _output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) keeping the aspect with the short side `short_side`, both even."""
    if short_side is None:
        return width, height
    if short_side < 2:
        raise ValueError(f"short_side must be >= 2, got {short_side}")
    scale = short_side / min(width, height)
    even = lambda x: max(2, int(round(x / 2.0)) * 2)  # noqa: E731
    if width <= height:
        return even(short_side), even(height * scale)
    return even(width * scale), even(short_side)


def read_frames(
    path, start_s: float, end_s: float, fps: float = 25.0, short_side: int | None = 256
) -> np.ndarray:
    """Frames of `[start_s, end_s)` sampled at `fps`, as uint8 RGB `[T, H, W, 3]`.

    Target times are t_k = start_s + k / fps, k < round((end_s - start_s) * fps); each gets
    the decoded frame whose presentation time is nearest (ties: the later frame). Targets past
    the last frame's display interval are dropped, so T is smaller when the file ends early.
    Frames are resized so the short side is `short_side` (even sizes; None keeps the size).
    """
    path = os.fspath(path)
    if fps <= 0 or end_s < start_s:
        raise ValueError(f"bad frame request for {path}: start={start_s} end={end_s} fps={fps}")
    num_wanted = _round_count((end_s - start_s) * fps)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        offset_s = _file_start_s(container)
        targets = offset_s + start_s + np.arange(num_wanted) / fps
        width, height = _output_size(
            stream.codec_context.width, stream.codec_context.height, short_side
        )
        rate = stream.average_rate or stream.guessed_rate
        default_frame_s = 1.0 / float(rate) if rate else 1.0 / fps
        try:
            frames = _sample_frames(container, stream, targets, default_frame_s, width, height)
        except av.FFmpegError as e:
            raise MediaError(f"cannot decode video of {path}: {e}") from e
    if not frames:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(frames)


def _sample_frames(container, stream, targets, default_frame_s, width, height) -> list:
    """Decode forward from a seek and pick, for each target time, the nearest frame."""
    if len(targets) == 0:
        return []
    seek_s = targets[0] - _VIDEO_SEEK_MARGIN_S
    while True:
        if seek_s > 0:
            container.seek(int(seek_s / stream.time_base), stream=stream, backward=True)
        # Only after a seek can the first decoded frame be "too late": then go back further
        # (at worst to the start). From the start, early targets get the first frame.
        picked = _pick_frames(
            container.decode(stream),
            targets,
            default_frame_s,
            width,
            height,
            may_be_late=seek_s > 0,
        )
        if picked is not None:
            return picked
        seek_s = seek_s - 2.0 if seek_s > 2.0 else 0.0


def _pick_frames(decoded, targets, default_frame_s, width, height, may_be_late):
    """Walk frames in presentation order. Returns None when `may_be_late` and the first
    decoded frame comes after targets[0] (the seek went too far)."""
    picked, cache = [], {}

    def rgb(frame, key):
        if key not in cache:
            cache.clear()  # frames are picked in order: only the latest is reused
            cache[key] = frame.reformat(
                width=width, height=height, format="rgb24", interpolation="AREA"
            ).to_ndarray()
        return cache[key]

    prev, prev_t, prev_key, frame_s = None, None, None, default_frame_s
    k = 0
    for index, frame in enumerate(decoded):
        if frame.pts is None:
            continue
        t = float(frame.pts * frame.time_base)
        if frame.duration:
            frame_s = float(frame.duration * frame.time_base)
        if may_be_late and prev is None and targets[0] < t - 0.5 * frame_s:
            return None
        while k < len(targets) and targets[k] <= t:
            if prev is not None and targets[k] - prev_t < t - targets[k]:
                picked.append(rgb(prev, prev_key))
            else:
                picked.append(rgb(frame, index))
            k += 1
        if k == len(targets):
            return picked
        prev, prev_t, prev_key = frame, t, index
    # Past the last frame: it is shown until prev_t + frame_s.
    while prev is not None and k < len(targets) and targets[k] < prev_t + frame_s:
        picked.append(rgb(prev, prev_key))
        k += 1
    return picked


def read_audio(path, start_s: float, end_s: float, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 waveform of `[start_s, end_s)`: `[round((end_s - start_s) * sample_rate)]`.

    Decoded audio is resampled and down-mixed by PyAV's AudioResampler, then cropped or
    zero-padded (before the start or past the end of the file) to exactly that length.
    """
    path = os.fspath(path)
    if end_s < start_s or sample_rate <= 0:
        raise ValueError(
            f"bad audio request for {path}: start={start_s} end={end_s} sample_rate={sample_rate}"
        )
    num_wanted = _round_count((end_s - start_s) * sample_rate)
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioStreamError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        offset_s = _file_start_s(container)
        # AAC decoders return the encoder's padding after the last real sample: stop at the
        # stream's end (presentation time).
        stream_end_s = None
        if stream.duration is not None and stream.time_base is not None:
            stream_end_s = _stream_start_s(stream) + float(stream.duration * stream.time_base)
        try:
            chunks, first_s = _decode_audio(
                container, stream, offset_s + start_s, offset_s + end_s, sample_rate
            )
        except av.FFmpegError as e:
            raise MediaError(f"cannot decode audio of {path}: {e}") from e
    out = np.zeros(num_wanted, np.float32)
    if first_s is None:
        return out
    decoded = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if stream_end_s is not None:
        decoded = decoded[: max(0, int(round((stream_end_s - first_s) * sample_rate)))]
    # Sample i of `decoded` is at presentation time first_s + i / sample_rate.
    shift = int(round((start_s + offset_s - first_s) * sample_rate))
    src_lo, dst_lo = max(shift, 0), max(-shift, 0)
    count = min(len(decoded) - src_lo, num_wanted - dst_lo)
    if count > 0:
        out[dst_lo : dst_lo + count] = decoded[src_lo : src_lo + count]
    return np.clip(out, -1.0, 1.0)


def _decode_audio(container, stream, start_s, end_s, sample_rate):
    """Resampled mono chunks from just before `start_s` to past `end_s`, and the time of the
    first decoded sample (None when nothing was decoded)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    seek_s = start_s - _AUDIO_SEEK_MARGIN_S
    if seek_s > 0:
        container.seek(int(seek_s / stream.time_base), stream=stream, backward=True)
    chunks, first_s = [], None
    for frame in container.decode(stream):
        if first_s is None:
            first_s = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
        if frame.pts is not None and float(frame.pts * frame.time_base) > end_s:
            break
    if first_s is not None:
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return chunks, first_s


def _fraction_rate(fps) -> fractions.Fraction:
    """Exact frame rate: NTSC-style rates (29.97, 59.94, 47.95, 23.976) become N*1000/1001."""
    if isinstance(fps, fractions.Fraction):
        return fps
    ntsc = fps * 1.001
    if abs(ntsc - round(ntsc)) < 0.01 and abs(fps - round(fps)) > 0.01:
        return fractions.Fraction(int(round(ntsc)) * 1000, 1001)
    return fractions.Fraction(fps).limit_denominator(1001)


def write_clip(
    path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int = 16000,
    video_codec: str = "h264",
    *,
    crf: int = 18,
    preset: str = "veryfast",
) -> None:
    """Write an mp4: `frames` uint8 `[T, H, W, 3]` (H, W even) at `fps` as H.264 or HEVC
    yuv420p, and `audio` (float `[samples]` mono, or None for no audio stream) as AAC.
    `crf` and `preset` are the x264/x265 quality and speed settings."""
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames for {path} must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
        )
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"frames for {path} must have even height and width, got {frames.shape[1:3]}"
        )
    if video_codec not in _VIDEO_CODECS:
        raise ValueError(
            f"video_codec={video_codec!r} for {path}; allowed: {sorted(_VIDEO_CODECS)}"
        )
    rate = _fraction_rate(fps)
    with av.open(path, mode="w", format="mp4") as container:
        # The encoder name comes from a dict, so PyAV's overloads can't tell it is a video codec.
        vstream = cast(av.VideoStream, container.add_stream(_VIDEO_CODECS[video_codec], rate=rate))
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": preset}
        if video_codec == "hevc":
            options["x265-params"] = "log-level=error"
            vstream.codec_context.codec_tag = "hvc1"  # what Apple/EPIC-style HEVC mp4s carry
        vstream.codec_context.options = options
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            _encode_audio(container, astream, audio, sample_rate, path)


def _encode_audio(container, stream, audio, sample_rate, path) -> None:
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio for {path} must be mono [samples], got shape {audio.shape}")
    audio = np.clip(audio, -1.0, 1.0)
    frame_size = stream.codec_context.frame_size or 1024
    for lo in range(0, len(audio), frame_size):
        chunk = np.ascontiguousarray(audio[lo : lo + frame_size])[None, :]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = lo
        frame.time_base = fractions.Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav of float `audio` in [-1, 1]: `[samples]` mono or `[samples, channels]`."""
    path = os.fspath(path)
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2:
        raise ValueError(
            f"audio for {path} must be [samples] or [samples, channels], got {audio.shape}"
        )
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(path, "wb") as out:
        out.setnchannels(audio.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
