"""Audio input/output helpers built on PyAV.

``load_audio`` decodes any audio that FFmpeg understands (wav in any bit depth, mp3,
m4a/aac, ogg/opus/vorbis, flac, and the audio track of a video file such as mp4),
downmixes it to mono and resamples it to a fixed rate, returning ``float32`` samples
in ``[-1, 1]``.  ``save_wav`` writes 16-bit PCM mono wav files with the standard
library only, and ``audio_duration_s`` converts a sample count to seconds.
"""

from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import av
import numpy as np

__all__ = ["AudioError", "audio_duration_s", "load_audio", "save_wav"]

logger = logging.getLogger(__name__)

#: Samples are decoded into this format and layout before being returned.
_OUT_FORMAT = "flt"
_OUT_LAYOUT = "mono"
#: libswresample options.  Without ``rematrix_maxval`` FFmpeg's float downmix is not
#: normalised (stereo -> mono is ``0.707 * (L + R)``, 5.1 of identical channels peaks at
#: 1.7x), which would clip loud material; 1.0 keeps the mix gain at or below unity.
_RESAMPLER_OPTIONS = {"rematrix_maxval": "1.0"}


class AudioError(ValueError):
    """Raised when audio cannot be read, decoded or written.

    It subclasses :class:`ValueError` so callers that already guard against bad
    input values catch it too.
    """


def _check_rate(sample_rate: int) -> int:
    """Return ``sample_rate`` as an ``int`` after checking that it is positive."""
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def _frame_key(frame: av.AudioFrame) -> tuple[str, str, int, int]:
    """Describe a decoded frame's sample format, layout and rate.

    A resampler is configured from the first frame it sees and refuses frames whose
    parameters differ, so the key tells us when a new resampler is needed (some
    streams, e.g. concatenated mp3 or broadcast AAC, change parameters mid-stream).
    """
    return (frame.format.name, frame.layout.name, frame.layout.nb_channels, frame.sample_rate)


class _MonoConverter:
    """Downmix and resample decoded frames to mono ``float32`` at a fixed rate.

    Wraps :class:`av.AudioResampler`, re-creating it (after flushing the old one) if
    the input parameters change, and collects the output as numpy chunks.
    """

    def __init__(self, sample_rate: int) -> None:
        """Prepare a converter that outputs ``sample_rate`` Hz mono float samples."""
        self.sample_rate = sample_rate
        self.chunks: list[np.ndarray] = []
        self.n_samples = 0
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int, int] | None = None

    def _collect(self, frames: list[av.AudioFrame]) -> None:
        """Append the samples of resampler output frames to ``chunks``."""
        for out in frames:
            if out is None or out.samples == 0:
                continue
            data = np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1)
            self.chunks.append(data)
            self.n_samples += data.size

    def push(self, frame: av.AudioFrame) -> None:
        """Convert one decoded frame."""
        if frame.samples == 0:
            return
        key = _frame_key(frame)
        if self._resampler is None or key != self._key:
            self.flush()
            self._resampler = av.AudioResampler(
                format=_OUT_FORMAT,
                layout=_OUT_LAYOUT,
                rate=self.sample_rate,
                options=_RESAMPLER_OPTIONS,
            )
            self._key = key
        self._collect(self._resampler.resample(frame))

    def flush(self) -> None:
        """Drain the samples the resampler still holds (its filter delay)."""
        if self._resampler is not None:
            self._collect(self._resampler.resample(None))
            self._resampler = None
            self._key = None

    def result(self) -> np.ndarray:
        """Return everything converted so far as one clipped ``float32`` array."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(self.chunks).astype(np.float32, copy=False)
        np.clip(samples, -1.0, 1.0, out=samples)
        return samples


def _declared_length(
    container: av.container.InputContainer, stream: av.AudioStream, rate: int
) -> int | None:
    """Return the sample count (at ``rate``) an MP4/MOV file declares for ``stream``.

    AAC frames are fixed at 1024 samples, so the decoder returns the encoder's end
    padding as well; MP4 records the true length in the track duration (edit list),
    which FFmpeg uses to drop the start priming but not the end padding.  Other
    containers either trim exactly themselves (Ogg, Matroska, gapless mp3) or only
    estimate their duration, so ``None`` (no limit) is returned for them.
    """
    names = set(container.format.name.split(","))
    if not names & {"mov", "mp4", "m4a"}:
        return None
    if stream.duration is None or stream.time_base is None or stream.duration <= 0:
        return None
    return round(float(stream.duration * stream.time_base) * rate)


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """Decode the audio of a media file to mono ``float32`` samples at ``sample_rate``.

    Any container/codec FFmpeg can read is accepted, including the audio track of a
    video file; the "best" audio stream (FFmpeg's choice) is used when there are
    several.  All channels are mixed down to mono with unity-or-less gain (identical
    channels come out unchanged) and the result is resampled with
    :class:`av.AudioResampler` (format ``flt``, layout ``mono``); the resampler is
    flushed at the end so its filter delay does not swallow the last samples.

    For MP4/M4A/MOV files the result is cut to the track duration the file declares,
    removing the AAC encoder's end padding (up to 1023 samples at the coded rate).

    Packets that fail to decode are skipped with a logged warning as long as some
    audio could be decoded, so a file truncated near its end still loads.

    Args:
        path: The media file to read.
        sample_rate: Output sample rate in Hz.

    Returns:
        A 1-D ``float32`` array with values in ``[-1, 1]``.  A file whose audio
        stream holds no samples gives an empty array.

    Raises:
        AudioError: if the file does not exist, is not a media file, cannot be
            decoded, or has no audio stream.
    """
    rate = _check_rate(sample_rate)
    file_path = Path(os.fspath(path))
    if not file_path.exists():
        raise AudioError(f"no such file: {file_path}")
    if not file_path.is_file():
        raise AudioError(f"not a regular file: {file_path}")

    try:
        container = av.open(str(file_path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise AudioError(
            f"could not decode {file_path}: not a readable audio or media file ({exc})"
        ) from exc

    with container:
        if not container.streams.audio:
            raise AudioError(
                f"{file_path} has no audio stream (read as {container.format.name!r} with "
                f"{len(container.streams.video)} video stream(s))"
            )
        try:
            stream = container.streams.best("audio") or container.streams.audio[0]
        except (AttributeError, av.FFmpegError):  # pragma: no cover - very old PyAV
            stream = container.streams.audio[0]

        converter = _MonoConverter(rate)
        errors = 0
        last_error: Exception | None = None
        try:
            # demux() ends with an empty packet per stream; decoding it flushes the decoder.
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    errors += 1
                    last_error = exc
                    continue
                for frame in frames:
                    converter.push(frame)
        except av.FFmpegError as exc:
            # Demuxing failed part way (corrupt or truncated container).
            errors += 1
            last_error = exc

        try:
            converter.flush()
        except av.FFmpegError as exc:  # pragma: no cover - defensive
            errors += 1
            last_error = exc
        max_samples = _declared_length(container, stream, rate)

    if errors:
        if converter.n_samples == 0:
            raise AudioError(
                f"could not decode the audio in {file_path}: the stream is corrupt or "
                f"unsupported ({last_error})"
            )
        logger.warning(
            "%s: skipped %d undecodable audio packet(s), last error: %s",
            file_path,
            errors,
            last_error,
        )
    samples = converter.result()
    if max_samples is not None and samples.size > max_samples:
        samples = samples[:max_samples]
    return samples


def audio_duration_s(samples: np.ndarray, sample_rate: int) -> float:
    """Return the duration in seconds of mono ``samples`` played at ``sample_rate`` Hz."""
    rate = _check_rate(sample_rate)
    array = np.asarray(samples)
    if array.ndim != 1:
        raise AudioError(f"expected a 1-D (mono) sample array, got shape {array.shape}")
    return array.shape[0] / rate


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Convert mono samples (float in ``[-1, 1]`` or any integer type) to ``int16``."""
    array = np.asarray(samples)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise AudioError(f"expected a 1-D (mono) sample array, got shape {array.shape}")
    if array.dtype == np.int16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        scaled = np.clip(np.nan_to_num(array.astype(np.float64)), -1.0, 1.0) * 32767.0
        return np.round(scaled).astype(np.int16)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min == 0:  # unsigned: centre on zero first
            centred = array.astype(np.float64) - (info.max + 1) / 2.0
            scaled = centred / ((info.max + 1) / 2.0)
        else:
            scaled = array.astype(np.float64) / float(-info.min)
        return np.round(np.clip(scaled, -1.0, 1.0) * 32767.0).astype(np.int16)
    raise AudioError(f"unsupported sample dtype {array.dtype}")


def save_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write mono ``samples`` to ``path`` as a 16-bit PCM wav file.

    Float samples are taken to be in ``[-1, 1]`` (values outside are clipped);
    integer samples are scaled from their type's full range.

    Raises:
        AudioError: if the samples are not 1-D or the sample rate is invalid.
    """
    rate = _check_rate(sample_rate)
    pcm = _to_int16(samples)
    with wave.open(os.fspath(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.astype("<i2", copy=False).tobytes())
