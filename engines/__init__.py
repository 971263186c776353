"""Running the face: audio in, face analysis, the two runtimes, media files. No HTTP or
WebRTC here (that is ``server/``); the networks and their training are ``etf_models/``.

Rooms, each a sub-package by concern, from the bottom up (a room may import the rooms
below it and ``etf_models``, never a room above; ``.importlinter`` checks it in CI):

- ``media/``: files: decoding any audio file, writing MP4 video, probing media.
- ``audio/``: speech in: the jitter buffer and VAD, the queue of speech handed over ahead
  of time (agents, ``say``), text to speech, the streaming phone recogniser, the DeepSpeech
  front end and its video windows, the built-in sentence.
- ``latency.py``: latency rings and quantiles, shared by every stage that reports timing.
- ``motion/``: the landmark motion model (named parameters x displacement fields,
  emotion fields), a session's emotion state and its transitions, blinks and idle motion.
- ``face/``: face analysis: detection, 68 landmarks, neutralising, enrollment, the
  identity file, the built-in face, measurements of faces in frames.
- ``render/``: the default renderer: speech -> phones -> visemes -> landmarks, the mesh
  warp with its mouth interior, paste-back, the per-frame pipeline.
- ``neural/``: the runtime of the paper's networks: G_L / G_T engines, backends (PyTorch,
  ONNX Runtime, CUDA, TensorRT), the batching device worker, GPU paste-back, live serving.
- ``recordings/``: real recordings -> training data (``etf preprocess``): landmarks tracked
  through clips, canonical crops, speech windows, written as ``etf_models/shards.py``.
- ``animators.py``: offline rendering that pairs any landmark engine with any texture
  engine, above both runtimes.
- ``avatar.py``: the in-process API (``Avatar``, ``AvatarStream``): push speech, set
  emotion, pull frames with their pts and audio; what each live session runs.

``render/``, ``neural/`` and ``recordings/`` are independent of each other. The canonical
frame, the 68-point layout and the emotion order are ``etf_models/canonical_face.py`` and
``etf_models/emotions.py``, shared with the networks.
"""
