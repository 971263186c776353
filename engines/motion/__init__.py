"""How a face moves, as landmark motion: shared by both runtimes and by face analysis.

- ``face_motion``: the linear motion model: named parameters (FACS action units, speech
  articulators, blink) x displacement fields over the 68 canonical points, per identity;
  the emotion -> parameter matrix; composing emotion with speech;
- ``emotion_state``: a session's emotion and intensity with smooth transitions;
- ``idle``: spontaneous blinks and slow idle head motion.

May import ``etf_models`` (the canonical frame, the emotion order); no other room.
"""
