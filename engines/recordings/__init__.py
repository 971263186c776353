"""Real recordings -> training data: what ``etf preprocess`` makes of dataset clips.

- ``preprocess``: landmarks tracked through each clip, aligned to the canonical frame,
  canonical crops and speech windows, written as training shards (format and readers:
  ``etf_models/shards.py``), each speaker's neutral face.

May import ``face``, ``audio``, ``media``, ``motion`` and ``etf_models``; never a runtime.
"""
