"""Write RGB frames (plus optional mono audio) to an H.264/AAC MP4 file with PyAV.

``Mp4Writer`` encodes frames as they arrive, so long renders do not have to be held
in memory, and interleaves the audio track with the video as it goes.  ``probe_media``
reports stream counts, durations, frame rate, size and a decoded frame count; it is
meant for tests and tools.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np

__all__ = ["Mp4Writer", "probe_media"]

#: Sample rate used for the AAC track when the encoder does not accept ``audio_rate``.
_FALLBACK_AUDIO_RATE = 48000
#: Samples per AudioFrame handed to the encoder (it re-chunks to its own frame size).
_AUDIO_CHUNK = 1024


def _as_fraction(value: float | Fraction, name: str) -> Fraction:
    """Convert a positive rate (``int``, ``float`` or ``Fraction``) to a ``Fraction``."""
    try:
        rate = Fraction(value).limit_denominator(1_000_000)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from exc
    if rate <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return rate


def _audio_to_float32(audio: np.ndarray) -> np.ndarray:
    """Return mono ``audio`` as contiguous ``float32`` in ``[-1, 1]``.

    Float input is clipped; integer input is scaled from its type's full range.
    """
    array = np.asarray(audio)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"audio must be a 1-D mono sample array, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        out = np.nan_to_num(array.astype(np.float32))
    elif np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min == 0:  # unsigned PCM is centred on half the range
            half = (info.max + 1) / 2.0
            out = ((array.astype(np.float64) - half) / half).astype(np.float32)
        else:
            out = (array.astype(np.float64) / float(-info.min)).astype(np.float32)
    else:
        raise ValueError(f"unsupported audio dtype {array.dtype}")
    return np.ascontiguousarray(np.clip(out, -1.0, 1.0))


class Mp4Writer:
    """Stream RGB frames into an H.264 MP4, optionally with an AAC audio track.

    Use as a context manager::

        with Mp4Writer("out.mp4", width, height, fps=25, audio=samples) as writer:
            for frame in frames:
                writer.write(frame)

    Video is encoded with ``libx264`` (``yuv420p``, preset ``veryfast``, constant
    quality ``crf``).  yuv420p needs even dimensions, so an odd ``width`` or
    ``height`` is padded by one pixel (the last column/row is repeated); the encoded
    size is available as :attr:`encoded_width` / :attr:`encoded_height`.

    When ``audio`` holds samples it is encoded as mono AAC in the same file.  It is
    kept at ``audio_rate`` when the AAC encoder supports that rate (8-96 kHz
    standard rates, 16 kHz included) and resampled to 48 kHz otherwise.  Both
    streams start at time 0; frame ``i`` is shown at ``i / fps`` and audio sample
    ``k`` plays at ``k / audio_rate``.  Audio is encoded alongside the video (each
    written frame pushes the audio up to that frame's end time) and whatever is
    left is flushed on close, so the audio track always has its full length, even
    if it is longer or shorter than the video.  When ``audio`` is ``None`` or empty
    the file has no audio stream at all (video only).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float | Fraction = 25,
        audio: np.ndarray | None = None,
        audio_rate: int = 16000,
        crf: int = 20,
        stream_audio: bool = False,
    ) -> None:
        """Open ``path`` for writing and set up the video (and audio) streams.

        Args:
            path: Output file; it is overwritten if it exists.
            width: Width of the frames passed to :meth:`write`, in pixels.
            height: Height of the frames passed to :meth:`write`, in pixels.
            fps: Frame rate (``int``, ``float`` or ``Fraction``, e.g. ``30000/1001``).
            audio: Optional 1-D mono samples (float in ``[-1, 1]`` or integer PCM).
            audio_rate: Sample rate of ``audio`` in Hz.
            crf: x264 constant rate factor (0-51, lower is better quality).
            stream_audio: Create the audio track even without ``audio``; samples then
                arrive through :meth:`append_audio` (live recording).

        Raises:
            ValueError: on invalid sizes, rates, crf or audio shape.
        """
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(audio_rate, bool) or int(audio_rate) != audio_rate or audio_rate <= 0:
            raise ValueError(f"audio_rate must be a positive integer, got {audio_rate!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf!r}")

        self.path = Path(os.fspath(path))
        self.width = int(width)
        self.height = int(height)
        self.encoded_width = self.width + self.width % 2
        self.encoded_height = self.height + self.height % 2
        self.fps = _as_fraction(fps, "fps")
        self.audio_rate = int(audio_rate)
        self.crf = int(crf)
        self.frames_written = 0

        samples = None if audio is None else _audio_to_float32(audio)
        self._audio: np.ndarray | None = samples if samples is not None and samples.size else None
        if self._audio is None and stream_audio:
            self._audio = np.zeros(0, np.float32)
        self._audio_pos = 0  # absolute index of the next sample to encode
        self._audio_base = 0  # absolute index of self._audio[0] (consumed samples are freed)
        self._closed = False
        self._audio_stream: Any = None
        self.encoded_audio_rate: int | None = None

        self._container = av.open(
            str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            self._video = self._container.add_stream(
                "libx264", rate=self.fps, time_base=1 / self.fps
            )
            self._video.width = self.encoded_width
            self._video.height = self.encoded_height
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(self.crf), "preset": "veryfast"}

            if self._audio is not None:
                supported = av.codec.Codec("aac", "w").audio_rates or ()
                enc_rate = self.audio_rate if self.audio_rate in supported else None
                self.encoded_audio_rate = enc_rate or _FALLBACK_AUDIO_RATE
                stream = self._container.add_stream("aac", rate=self.encoded_audio_rate)
                stream.layout = "mono"
                self._audio_stream = stream
        except BaseException:
            self._container.close()
            raise

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> Mp4Writer:
        """Return the writer itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish and close the file (also when the block raised)."""
        self.close()

    # -- writing ---------------------------------------------------------------------

    @property
    def has_audio(self) -> bool:
        """Whether the file gets an audio stream."""
        return self._audio_stream is not None

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``height x width x 3`` ``uint8`` RGB frame.

        Raises:
            RuntimeError: if the writer is closed.
            ValueError: if the frame has the wrong shape or dtype.
        """
        if self._closed:
            raise RuntimeError(f"Mp4Writer for {self.path} is closed")
        array = np.asarray(frame)
        if array.shape != (self.height, self.width, 3):
            raise ValueError(
                f"expected a frame of shape {(self.height, self.width, 3)}, got {array.shape}"
            )
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB frame, got dtype {array.dtype}")
        pad_h = self.encoded_height - self.height
        pad_w = self.encoded_width - self.width
        if pad_h or pad_w:
            array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.fps
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

        if self._audio is not None:
            end_s = self.frames_written / self.fps
            self._push_audio(round(end_s * self.audio_rate))

    def append_audio(self, samples: np.ndarray) -> None:
        """Add mono samples (at ``audio_rate``) to the end of the audio track."""
        if self._audio is None:
            raise RuntimeError("this writer has no audio track (pass stream_audio=True)")
        self._audio = np.concatenate([self._audio, _audio_to_float32(samples)])

    def _push_audio(self, until: int) -> None:
        """Encode and mux audio samples up to (not including) absolute index ``until``."""
        assert self._audio is not None and self._audio_stream is not None
        until = min(until, self._audio_base + self._audio.size)
        while self._audio_pos < until:
            stop = min(self._audio_pos + _AUDIO_CHUNK, until)
            chunk = self._audio[None, self._audio_pos - self._audio_base : stop - self._audio_base]
            audio_frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format="fltp", layout="mono"
            )
            audio_frame.sample_rate = self.audio_rate
            audio_frame.pts = self._audio_pos
            audio_frame.time_base = Fraction(1, self.audio_rate)
            for packet in self._audio_stream.encode(audio_frame):
                self._container.mux(packet)
            self._audio_pos = stop
        self._audio = self._audio[self._audio_pos - self._audio_base :]
        self._audio_base = self._audio_pos

    def close(self) -> None:
        """Flush the encoders, write the remaining audio and finalise the file.

        Safe to call more than once.
        """
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._push_audio(self._audio_base + self._audio.size)
                for packet in self._audio_stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()


def probe_media(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a media file's first video and first audio stream.

    The frame count is obtained by decoding every video frame.  Durations come from
    the container (which honours MP4 edit lists, i.e. AAC priming and padding are
    excluded); when the container does not record one, the decoded content is used
    instead (``n_frames / fps`` for video, decoded samples for audio).

    Returns:
        A dict with ``video_streams``, ``audio_streams`` (counts), ``video_duration_s``,
        ``audio_duration_s``, ``fps``, ``width``, ``height``, ``n_frames`` and also
        ``video_start_s``, ``audio_start_s``, ``video_codec``, ``audio_codec``,
        ``audio_rate``, ``audio_channels`` and ``audio_decoded_s`` (decoded sample
        count / rate, which for AAC includes the encoder's end padding).  Values for
        an absent stream are ``None`` (``n_frames`` is 0).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be opened as media.
    """
    file_path = Path(os.fspath(path))
    if not file_path.is_file():
        raise FileNotFoundError(f"no such file: {file_path}")
    try:
        container = av.open(str(file_path), mode="r")
    except av.FFmpegError as exc:
        raise ValueError(f"could not open {file_path} as media: {exc}") from exc

    info: dict[str, Any] = {
        "video_streams": 0,
        "audio_streams": 0,
        "video_duration_s": None,
        "audio_duration_s": None,
        "fps": None,
        "width": None,
        "height": None,
        "n_frames": 0,
        "video_start_s": None,
        "audio_start_s": None,
        "video_codec": None,
        "audio_codec": None,
        "audio_rate": None,
        "audio_channels": None,
        "audio_decoded_s": None,
    }
    with container:
        info["video_streams"] = len(container.streams.video)
        info["audio_streams"] = len(container.streams.audio)
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        wanted = [s for s in (video, audio) if s is not None]

        n_frames = 0
        n_samples = 0
        first_video_pts: float | None = None
        first_audio_pts: float | None = None
        if wanted:
            for packet in container.demux(wanted):
                for frame in packet.decode():
                    t = (
                        None
                        if frame.pts is None or frame.time_base is None
                        else float(frame.pts * frame.time_base)
                    )
                    if packet.stream is video:
                        n_frames += 1
                        if first_video_pts is None:
                            first_video_pts = t
                    else:
                        n_samples += frame.samples
                        if first_audio_pts is None:
                            first_audio_pts = t

        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            fps = float(rate) if rate else None
            info.update(
                fps=fps,
                width=video.codec_context.width,
                height=video.codec_context.height,
                n_frames=n_frames,
                video_start_s=first_video_pts,
                video_codec=video.codec_context.name,
            )
            if video.duration is not None and video.time_base is not None:
                info["video_duration_s"] = float(video.duration * video.time_base)
            elif fps:
                info["video_duration_s"] = n_frames / fps

        if audio is not None:
            rate_hz = audio.codec_context.sample_rate or None
            decoded_s = n_samples / rate_hz if rate_hz else None
            info.update(
                audio_rate=rate_hz,
                audio_channels=audio.codec_context.channels,
                audio_start_s=first_audio_pts,
                audio_codec=audio.codec_context.name,
                audio_decoded_s=decoded_s,
            )
            if audio.duration is not None and audio.time_base is not None:
                info["audio_duration_s"] = float(audio.duration * audio.time_base)
            else:
                info["audio_duration_s"] = decoded_s
    return info
