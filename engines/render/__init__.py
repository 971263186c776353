"""The default renderer: a face from speech on the CPU, without trained networks.

- ``visemes`` and ``landmark_default``: phones -> mouth targets, coarticulated and scaled
  by loudness, composed with emotion, blinks and idle motion: streaming landmarks;
- ``texture_warp``: the piecewise-linear mesh warp of the photo with a synthesized mouth
  interior and eyelids;
- ``compositor``: paste-back into the full photo;
- ``pipeline``: ``FaceAnimator``, one session's audio -> full frames.

May import ``face``, ``motion``, ``audio``, ``media`` and ``etf_models``; never the neural
runtime (``animators.py`` pairs the two).
"""
