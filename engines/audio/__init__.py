"""Live speech in: from network or file audio to what the landmark engines read.

- ``audio_ingest``: the live session's jitter buffer, resampling to 16 kHz, the VAD gate;
- ``speech_queue``: speech handed over ahead of time (an agent's audio, ``say``), any
  rate, played out per tick, interruptible;
- ``tts``: text to speech for ``say`` (Piper's neural voice when installed, else flite);
- ``phone_stream``: pocketsphinx phones, streaming, with a fixed commit delay;
- ``speech_frontend``: the DeepSpeech front end (streaming logits at 50 Hz, the paper's
  6-row video windows), its pinned default weights;
- ``assets/``: the built-in sentence.

May import ``etf_models`` (the speech network and features); no other room.
"""
