"""Media files: any audio file decoded to mono float samples (``audio_io``), MP4 written
with its audio and probed (``video_writer``).

Imports nothing else of the project: every room may use it.
"""
