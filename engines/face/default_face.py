"""The built-in default face: NASA's public-domain astronaut portrait shipped by scikit-image.

It needs no download and no argument, so ``etf render`` and ``etf serve`` work out of the box.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from engines.face.enrollment import EnrollOptions, enroll_image
from engines.face.identity import Identity

#: Head-and-shoulders crop of the 512x512 original (x0, y0, size): the face is ~90 px wide
#: there, so the crop is upscaled 2x to give the warp enough pixels to work with.
_CROP = (84, 0, 256)
_UPSCALE = 2


def default_photo() -> np.ndarray:
    """The default portrait, RGB uint8 [512,512,3]."""
    from skimage import data

    x0, y0, s = _CROP
    img = data.astronaut()[y0 : y0 + s, x0 : x0 + s]
    return cv2.resize(img, None, fx=_UPSCALE, fy=_UPSCALE, interpolation=cv2.INTER_LANCZOS4)


@lru_cache(maxsize=1)
def default_identity() -> Identity:
    """The enrolled default face (enrolled once per process, ~0.2 s).

    Enrolled quietly: what enrollment corrects (the portrait's open, smiling mouth) is a
    fact of the built-in face, kept in ``warnings``, not advice for whoever runs it.
    """
    return enroll_image(default_photo(), source="astronaut (scikit-image, public domain)",
                        options=EnrollOptions(log_warnings=False))
