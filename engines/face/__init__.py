"""Face analysis: photos and frames -> faces the engines can animate.

- ``enrollment``: reading photos, dlib face detection and 68 landmarks, neutralising an
  expression, enrolling a photo into an ``Identity``;
- ``identity``: the enrolled identity and its versioned file format;
- ``default_face``: the built-in face;
- ``face_metrics``: measurements of faces in video frames (landmarks per frame, mouth
  opening, brow raise, lip-sync correlation) for tests and benchmarks.

May import ``motion`` (neutralising fits the motion model), ``media`` and ``etf_models``;
never a renderer, the neural runtime or the server.
"""
