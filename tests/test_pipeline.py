"""Audio in, frames out: the mouth follows speech, silence blinks, emotions show."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import streamed_landmarks, synth_speech

from engines.motion.emotion_state import EmotionState
from engines.motion.face_motion import P
from engines.render import texture_warp
from engines.render.pipeline import FaceAnimator
from etf_models.canonical_face import apply_affine, mouth_opening


@pytest.fixture(scope="module")
def warp(identity):
    return texture_warp.prepare(identity)


def _run(identity, warp, audio, **kw):
    anim = FaceAnimator(identity, warp=warp, **kw)
    return anim, list(anim.render_all(audio))


def test_mouth_opens_in_speech_and_closes_in_silence(identity, warp, tmp_path):
    pad = 0.8
    audio = synth_speech(
        "Hello there. We are talking about a bright blue boat.", tmp_path / "s.wav", pad_s=pad
    )
    anim, frames = _run(identity, warp, audio)
    assert len(frames) == int(np.ceil(len(audio) / 16000 * 25 - 1e-6))
    times = np.array([f.time_s for f in frames])
    assert np.all(np.diff(times) > 0)
    opening = np.array([mouth_opening(f.landmarks) for f in frames])
    dur = len(audio) / 16000
    silent = (times < pad - 0.3) | (times > dur - pad + 0.3)
    speech = (times > pad + 0.1) & (times < dur - pad - 0.1)
    assert opening[silent].max() < 0.03, opening[silent]
    # real talking mouths (13 people, benchmarks/lipsync_talking.py): median opening 0.03-0.15,
    # 90th percentile 0.06-0.22; this loud synthetic voice sits in the wide half
    print("speech opening mean / p90", opening[speech].mean(), np.percentile(opening[speech], 90))
    assert 0.07 < opening[speech].mean() < 0.16, opening[speech].mean()
    assert 0.11 < np.percentile(opening[speech], 90) < 0.3
    # The lips close for some of the /b/ and /p/ in the sentence while speech goes on.
    assert (opening[speech] < 0.05).sum() >= 2


def test_silence_is_a_still_blinking_face(identity, warp):
    audio = np.zeros(6 * 16000, np.float32)
    _, frames = _run(identity, warp, audio)
    blinks = np.array([f.params[P["blink"]] for f in frames])
    assert blinks.max() > 0.8  # at least one full blink in 6 s
    assert (blinks > 0.5).mean() < 0.15  # but eyes are open most of the time
    closed_runs = np.diff((blinks > 0.5).astype(int))
    assert 1 <= (closed_runs == 1).sum() <= 4  # gaps of a few seconds
    assert max(mouth_opening(f.landmarks) for f in frames) < 0.03
    # Idle motion: the face moves a little, never a lot.
    nose = np.array([f.landmarks[30] for f in frames])
    assert 0.2 < np.ptp(nose[:, 0]) < 6.0


def test_rendered_mouth_shows_interior_during_speech(identity, warp, tmp_path):
    audio = synth_speech("Ah, ah, ah.", tmp_path / "a.wav", pad_s=0.6)
    _, frames = _run(identity, warp, audio)
    ring = identity.canonical_to_photo(identity.neutral[48:60])
    x0, y0 = ring.min(0).astype(int) - 4
    x1, y1 = ring.max(0).astype(int) + 20

    def dark(img):
        return int((img[y0:y1, x0:x1].mean(axis=2) < 80).sum())

    opening = np.array([mouth_opening(f.landmarks) for f in frames])
    widest = frames[int(np.argmax(opening))].image
    first = frames[0].image
    assert dark(widest) > dark(first) + 50
    # Outside the face region the photo is untouched (background kept).
    np.testing.assert_array_equal(first[:, -8:], identity.photo[:, -8:])


def test_emotion_switch_shows_within_transition(identity, warp):
    emotion = EmotionState("neutral")
    anim = FaceAnimator(identity, warp=warp, emotion=emotion)
    audio = np.zeros(2 * 16000, np.float32)
    anim.push_audio(audio)
    anim.flush()
    width = []
    for i in range(anim.frames_ready()):
        if i == 10:
            emotion.set("happy", 1.0, at=i / 25, transition_s=0.25)
        f = anim.step()
        width.append(float(f.landmarks[54, 0] - f.landmarks[48, 0]))
    width = np.array(width)
    assert width[11] - width[9] > 0.3  # widening within 2 frames
    assert width[20] > width[9] + 4.0  # and fully smiling after the transition


def test_intensity_zero_renders_like_neutral(identity, warp):
    audio = np.zeros(16000, np.float32)
    _, neutral = _run(identity, warp, audio, emotion=EmotionState("neutral"))
    _, zero = _run(identity, warp, audio, emotion=EmotionState("angry", 0.0))
    _, angry = _run(identity, warp, audio, emotion=EmotionState("angry", 1.0))
    np.testing.assert_array_equal(neutral[5].image, zero[5].image)
    assert np.abs(angry[5].image.astype(int) - neutral[5].image).mean() > 0.3


def test_streaming_frames_match_audio_length(identity, warp):
    for fps in (25.0, 30.0):
        anim = FaceAnimator(identity, warp=warp, fps=fps)
        audio = np.zeros(int(1.3 * 16000), np.float32)
        frames = list(anim.render_all(audio, chunk=160))
        assert len(frames) == int(np.ceil(1.3 * fps - 1e-6))
        assert anim.lookahead_ms > 0


def test_shorter_coarticulation_reach_is_chunking_independent(identity, tmp_path):
    """The live setting (phones 100 ms, coarticulation 60 ms ahead) declares 200 ms of
    lookahead and gives the same frames however the audio is chunked."""
    from engines.render.landmark_default import SpeechLandmarkEngine

    speech = synth_speech("Bob bought a map of the moon.", tmp_path / "s.wav")
    old = {"phone_lookahead_ms": 100, "coart_future_ms": 60}
    assert SpeechLandmarkEngine(identity.neutral, 25.0, **old).lookahead_ms == 200.0
    a = streamed_landmarks(identity.neutral, speech, 320, **old)
    b = streamed_landmarks(identity.neutral, speech, 4000, **old)
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="coart_future_ms"):
        SpeechLandmarkEngine(identity.neutral, 25.0, coart_future_ms=150)
    with pytest.raises(ValueError, match="anticipation_ms"):
        SpeechLandmarkEngine(identity.neutral, 25.0, anticipation_ms=-10)


def test_live_default_looks_100_ms_ahead_and_releases_frames_two_ticks_later(identity, warp):
    """The live path's declared lookahead (phones 60 + coarticulation 0 + anticipation 40)
    is at most 100 ms, and the ingest -> engine path really makes frame k ready two 40 ms
    ticks after its chunk (pipeline delay (2 + 2) x 40 = 160 ms): a 16 kHz speech copy
    that held back the resampler's last samples left the recogniser's last 20 ms step
    undecoded and cost a third tick. The old live setting (200 ms) needs five."""
    from engines.avatar import Avatar, StreamConfig

    avatar = Avatar(identity, warp)
    live = StreamConfig()
    assert avatar.animator(live).lookahead_ms <= 100.0
    assert avatar.ready_lag(live) == 2
    old = StreamConfig(phone_lookahead_ms=100.0, coart_future_ms=60.0)
    assert avatar.animator(old).lookahead_ms == 200.0 and avatar.ready_lag(old) == 5
    for bad in ({"phone_lookahead_ms": 40.0}, {"coart_future_ms": 120.0},
                {"anticipation_ms": 250.0}):
        with pytest.raises(ValueError, match="outside"):
            StreamConfig(**bad)


def test_open_mouthed_photo_shuts_without_its_teeth(identity, warp):
    """The built-in photo smiles with its teeth showing; at rest its lips meet over a lip
    seam, not over a strip of those teeth squeezed between them."""
    assert identity.expression[:2].sum() > 0.3  # the photo's mouth is open
    out = texture_warp.render_roi(warp, identity.neutral)
    dst = apply_affine(warp.canon_to_roi, identity.neutral)
    mid = 0.5 * (dst[[60, 61, 62, 63, 64]] + dst[[60, 67, 66, 65, 64]])
    seam = np.zeros(out.shape[:2], np.uint8)
    cv2.polylines(seam, [np.round(mid).astype(np.int32)], False, 1, 5)
    px = out[seam > 0].astype(float)
    grey = (px.max(axis=1) - px.min(axis=1)) / np.maximum(px.max(axis=1), 1) < 0.16
    toothy = grey & (px.mean(axis=1) > 150)
    # Squeezed teeth made ~10% of this band bright and grey; lips meeting make ~3%.
    assert toothy.mean() < 0.05, f"{toothy.mean():.1%} of where the lips meet looks like teeth"


def test_warp_is_exact_on_parting_lips(identity):
    """Lips that part from a shut photo stretch many times over; the backward map there
    must land where the forward warp sends each pixel (the fixed-point inverse alone left
    half the lip pixels 15 px off: light cracks across the lips)."""
    import cv2

    from engines.motion import face_motion as M
    from etf_models.canonical_face import apply_affine

    warp = texture_warp.prepare(identity, expression=False)
    p = np.zeros(M.N_PARAMS, np.float32)
    p[[M.P["jaw_open"], M.P["lips_part"], M.P["lip_round"]]] = (0.8, 0.4, 0.5)
    lm = M.apply(identity.neutral, M.build_fields(identity.neutral), p)
    h, w = warp.shape
    dst = apply_affine(warp.canon_to_roi, lm).astype(np.float32)
    delta = texture_warp.vertex_displacement(warp, dst - warp.src_vertices[:68])
    field = (warp.weights @ delta).reshape(h, w, 2)
    lips = np.zeros((h, w), np.uint8)
    cv2.fillPoly(lips, [np.round(dst[48:60]).astype(np.int32)], 1)
    opening = np.zeros((h, w), np.uint8)
    cv2.fillPoly(opening, [np.round(dst[60:68]).astype(np.int32)], 1)
    on_lips = (lips > 0) & (cv2.dilate(opening, np.ones((3, 3), np.uint8)) == 0)
    back = texture_warp.backward_map(warp, lm)
    landed = back + cv2.remap(field, back, None, cv2.INTER_LINEAR)
    err = np.linalg.norm(landed - warp.grid, axis=-1)[on_lips]
    assert on_lips.sum() > 500
    assert (err > 1.0).mean() < 0.02 and np.percentile(err, 99) < 1.0, np.percentile(err, 99)


def test_paste_copies_the_solid_interior_and_blends_the_band_only(identity, warp):
    """Pasting with the feather's solid box gives the very pixels of a full blend."""
    from engines.render.compositor import paste_roi, solid_box

    x0, y0, x1, y1 = warp.solid
    h, w = warp.shape
    assert 0 < x0 < x1 < w and 0 < y0 < y1 < h and (x1 - x0) * (y1 - y0) > 0.6 * h * w
    roi = np.random.default_rng(1).integers(0, 256, warp.image.shape, dtype=np.uint8)
    full = paste_roi(identity.photo, roi, warp.roi, warp.feather)
    fast = paste_roi(identity.photo, roi, warp.roi, warp.feather, solid=warp.solid)
    np.testing.assert_array_equal(fast, full)
    ring = warp.feather.copy()
    ring[h // 2, w // 2] = 0.5  # a hole: no longer one solid rectangle
    assert solid_box(ring) is None


def test_the_half_size_field_is_the_whole_meshs(identity, warp):
    """The per-frame field uses only the 68 landmarks' barycentric columns (the border
    anchors never move), on a grid of 2x2 block centres, enlarged, and pixel by pixel over
    the lips (where it jumps). Over the built-in sentence (jaw, lips, blinks, head) the
    field and the backward map made from it are within half a pixel of the whole matrix's
    at full size (0.04-0.12 px at 99.9% of pixels)."""
    from engines.media.audio_io import load_audio
    from server.cli import builtin_sentence

    h, w = warp.shape
    moving = 68 + len(warp.fill_weights)
    assert warp.field_weights.shape == (((h + 1) // 2) * ((w + 1) // 2), moving)
    assert warp.field_weights.nnz + warp.mouth_weights.nnz < 0.4 * warp.weights.nnz
    anim = FaceAnimator(identity, warp=warp)
    speech = load_audio(builtin_sentence(), 16000)[: 16000 * 3]
    worst, p999 = 0.0, []
    for frame in list(anim.render_all(speech))[::4]:
        moved, field = texture_warp.displacement(warp, frame.landmarks)
        full = (warp.weights @ (moved - warp.src_vertices)).reshape(h, w, 2)
        assert np.abs(field - full).max() < 0.6
        exact = warp.grid - cv2.remap(full, warp.grid - full, None, cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE)
        ours = texture_warp.invert_field(warp, field)
        for m in (exact, ours):  # the lips are inverted exactly either way
            texture_warp._invert_lips(warp, moved, m)
        err = np.abs(ours - exact).max(-1)
        worst = max(worst, err.max())
        p999.append(np.percentile(err, 99.9))
    assert worst < 0.6 and max(p999) < 0.15, (worst, p999)


@pytest.mark.parametrize("lip", [(206, 151, 140), (193, 122, 112), (135, 63, 52),
                                 (210, 40, 70), (60, 35, 30)])
def test_teeth_colour_from_lips_is_a_warm_white(lip):
    """Teeth are as bright against the lips as real teeth are, a yellowish white (R >= G >=
    B) that lipstick does not tint, and never past white (the eyelid-based colour made
    people_0's and art_1's teeth grey-blue)."""
    t = texture_warp.teeth_from_lips(np.array(lip, np.float32))
    assert t[0] >= t[1] >= t[2]
    assert (t.max() - t.min()) / t.max() <= texture_warp.TEETH_MAX_SATURATION + 1e-6
    assert t.max() <= 248.0
    assert t.mean() > 1.2 * np.mean(lip) or t.max() >= 247.0


def test_teeth_in_the_photos_light_come_from_the_whites_of_the_eyes_too():
    """Red lipstick says nothing of the light: the teeth made from such lips alone were a
    dim pink (the devset's red-lipped speakers' real teeth are near white, measured in
    benchmarks/teeth_light.py). With both eyes' whites shown the teeth are the brighter of
    the two estimates; whites that are dark (a squint), coloured (a red eye, a painted
    eye) or unlike each other are not used."""
    red = np.array([152.0, 63.0, 75.0])
    white = np.array([220.0, 214.0, 216.0])  # AOC's, the brightest tenth
    from_lips = texture_warp.teeth_from_lips(red)
    t = texture_warp.teeth_in_light(red, [white, white * 0.97])
    assert t.mean() > 1.2 * from_lips.mean() and t.mean() > 200
    assert (t.max() - t.min()) / t.max() < 0.05  # a white, not pink
    assert (from_lips.max() - from_lips.min()) / from_lips.max() > 0.2
    for whites in ([white], [white, np.array([203.0, 80.0, 66.0])],
                   [white, 0.5 * white], [0.5 * white, 0.5 * white]):
        assert np.array_equal(texture_warp.teeth_in_light(red, whites), from_lips)
    # bare lips that already say more light than dim whites keep their own
    bare = np.array([206.0, 151.0, 140.0])
    assert np.array_equal(texture_warp.teeth_in_light(bare, [0.6 * white] * 2),
                          texture_warp.teeth_from_lips(bare))


TEETH_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking"


@pytest.mark.skipif(not TEETH_DATA.is_dir(), reason="needs ../shared/data/talking")
def test_the_teeth_over_white_ratio_is_what_the_real_clips_give(tmp_path):
    import json

    from benchmarks import teeth_light

    teeth_light.main(["-o", str(tmp_path / "t.json")])
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["teeth_over_sclera_rgb_everyone"] == texture_warp.TEETH_OVER_SCLERA.tolist()
    held = got["leave_one_person_out"]
    assert (held["brighter"]["luminance_abs_log_median"]
            < held["lips"]["luminance_abs_log_median"])


def test_mouth_colour_constants_are_the_measured_ones():
    """The painted mouth's colours are the ones `etf fit-mouth` measured on real mouths."""
    import json
    from pathlib import Path

    rep = json.loads((Path(__file__).parents[1] / "benchmarks" / "results"
                      / "mouth_model.json").read_text())["interior_colours"]
    assert np.allclose(texture_warp.TEETH_OVER_LIP, rep["teeth_over_lip_rgb"])
    assert np.isclose(texture_warp.TEETH_MAX_SATURATION, rep["teeth_saturation_p75"])
    assert np.allclose(texture_warp.CAVITY_OVER_LIP, rep["cavity_over_lip_rgb"])
    assert np.isclose(texture_warp.TEETH_LIGHT_OPEN, rep["teeth_over_lip_luminance"])
    assert np.allclose(texture_warp.TEETH_GAP, rep["teeth_by_gap"]["gap"])
    assert np.allclose(texture_warp.TEETH_LIGHT, rep["teeth_by_gap"]["teeth_over_lip_luminance"])
    assert len(rep["people"]) >= 10


def test_open_mouth_shows_teeth_cavity_and_tongue(identity, warp):
    """An "aa" shows upper teeth brighter than the lips, a dark cavity under them and the
    tongue, lighter than the cavity, above the lower lip."""
    from engines.motion import face_motion as M

    p = np.zeros(M.N_PARAMS, np.float32)
    p[[M.P["jaw_open"], M.P["lips_part"]]] = (0.85, 0.3)
    lm = M.apply(identity.neutral, M.build_fields(identity.neutral), p)
    out = texture_warp.render_roi(warp, lm).astype(float)
    dst = apply_affine(warp.canon_to_roi, lm)
    x = int(round(dst[[62, 66], 0].mean()))
    top, bottom = dst[62, 1], dst[66, 1]
    col = out[int(top):int(bottom), x - 1:x + 2].mean(1)  # down the middle of the opening
    lum = col.mean(1)
    n = len(lum)
    cavity, tongue = lum[n // 4:n // 2].min(), lum[-n // 4:].max()
    # the teeth either side of the midline (the column itself is the central incisors' gap)
    teeth = out[int(top):int(top) + n // 4, x - 6:x + 7].mean(-1).max()
    assert teeth > 1.15 * warp.lip_colour.mean(), (teeth, warp.lip_colour)
    assert cavity < 0.6 * warp.lip_colour.mean()
    assert tongue > cavity + 15, (tongue, cavity)


def test_teeth_dim_in_a_narrow_opening(identity, warp):
    """Real teeth in a narrow opening stay in the lips' shadow (benchmarks/results/
    mouth_model.json, teeth_by_gap): ours are darker at a small gap than at a wide one."""
    tops = [_brightest_in_opening(identity, warp, {"jaw_open": jaw}, 1) for jaw in (0.15, 0.9)]
    assert tops[0] < 0.8 * tops[1], tops


def _brightest_in_opening(identity, warp, params: dict[str, float], half: int) -> float:
    """The brightest grey level down the middle of the opening (2 * ``half`` + 1 columns
    wide) of the face rendered with speech ``params``."""
    from engines.motion import face_motion as M

    p = np.zeros(M.N_PARAMS, np.float32)
    for k, v in params.items():
        p[M.P[k]] = v
    lm = M.apply(identity.neutral, M.build_fields(identity.neutral), p)
    out = texture_warp.render_roi(warp, lm).astype(float)
    dst = apply_affine(warp.canon_to_roi, lm)
    x = int(round(dst[[62, 66], 0].mean()))
    return float(out[int(dst[62, 1]):int(dst[66, 1]) + 1, x - half:x + half + 1].mean(-1).max())


def test_pressed_lips_leave_no_torn_pixels(identity, warp):
    """A pressed /m/ on a photo whose lips were parted folds a triangle across the mouth;
    its map must not be painted over its neighbours (it drew dotted light lines below the
    lips: ~45 pixels whose source jumped over 16 px from their neighbour's)."""
    from engines.motion import face_motion as M
    from engines.render.landmark_default import SpeechLandmarkEngine

    p = SpeechLandmarkEngine.viseme("M")
    lm = M.apply(identity.neutral, M.build_fields(identity.neutral), p)
    m = texture_warp.backward_map(warp, lm)
    dst = apply_affine(warp.canon_to_roi, lm)
    (x0, y0), (x1, y1) = (np.floor(dst[48:68].min(0)).astype(int) - 10,
                          np.ceil(dst[48:68].max(0)).astype(int) + 20)
    box = m[y0:y1, x0:x1]
    jumps = np.maximum(np.linalg.norm(np.diff(box, axis=1), axis=-1)[1:, :],
                       np.linalg.norm(np.diff(box, axis=0), axis=-1)[:, 1:])
    assert (jumps > 16).sum() <= 10, int((jumps > 16).sum())


def test_painted_mouth_is_as_soft_and_grainy_as_the_photo(identity, warp):
    """The painted interior follows the photo's own softness (a sharp drawing inside a
    soft photo read as pasted in) and grain, and the estimate follows the photo."""
    from dataclasses import replace

    import cv2

    from engines.motion import face_motion as M

    lm_photo = identity.canonical_to_photo(identity.landmarks_canonical)
    sharp, grain = texture_warp.photo_softness(identity.photo, lm_photo)
    soft, _ = texture_warp.photo_softness(cv2.GaussianBlur(identity.photo, (0, 0), 1.2),
                                          lm_photo)
    assert 0.5 <= sharp < soft, (sharp, soft)
    assert grain > 0.5

    p = np.zeros(M.N_PARAMS, np.float32)
    p[[M.P["jaw_open"], M.P["lips_part"]]] = (0.85, 0.3)
    lm = M.apply(identity.neutral, M.build_fields(identity.neutral), p)
    dst = apply_affine(warp.canon_to_roi, lm)
    (x0, y0), (x1, y1) = np.floor(dst[60:68].min(0)).astype(int), np.ceil(
        dst[60:68].max(0)).astype(int)

    def detail(state):
        out = texture_warp.render_roi(state, lm)[y0:y1, x0:x1]
        g = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.square(cv2.Laplacian(g, cv2.CV_32F)).mean())

    clean = replace(warp, photo_grain=0.0)
    assert detail(replace(clean, photo_blur=2.0)) < 0.5 * detail(replace(clean, photo_blur=0.0))
    assert detail(replace(warp, photo_grain=4.0)) > 1.2 * detail(replace(warp, photo_grain=0.0))


def test_f_v_rests_the_lower_lip_on_the_upper_teeth(identity, warp):
    """/f v/ at full loudness keeps the lips nearly shut (the lower lip against the upper
    teeth, not the jaw held open as for a vowel) and shows the upper teeth there."""
    from engines.motion import face_motion as M
    from engines.render.landmark_default import SpeechLandmarkEngine
    from etf_models.canonical_face import IOD

    fields = M.build_fields(identity.neutral)

    def gap(phone):
        lm = M.apply(identity.neutral, fields, SpeechLandmarkEngine.viseme(phone))
        return float((lm[[65, 66, 67], 1] - lm[[61, 62, 63], 1]).mean()) / IOD, lm

    g_f, lm = gap("F")
    g_aa, _ = gap("AA")
    assert 0.02 < g_f < 0.07 and g_aa > 0.2, (g_f, g_aa)
    out = texture_warp.render_roi(warp, lm).astype(float)
    dst = apply_affine(warp.canon_to_roi, lm)
    x = int(round(dst[[62, 66], 0].mean()))
    between = out[int(dst[62, 1]) + 1:int(np.ceil(dst[66, 1])), x - 1:x + 2].mean(-1)
    # teeth in the lips' shade (real narrow openings are about as light as the lips), far
    # lighter than the cavity's dark (CAVITY_OVER_LIP: ~0.4 of the lips)
    assert between.max() > 0.55 * warp.lip_colour.mean(), (between, warp.lip_colour)


def test_rounded_lips_leave_the_teeth_in_shade(identity, warp):
    """Real rounded openings (oo, w) show mostly dark: the lips stand forward of the teeth.
    At the same jaw opening, rounded lips show the teeth darker than relaxed ones."""
    tops = [_brightest_in_opening(identity, warp,
                                  {"jaw_open": 0.4, "lips_part": 0.3, "lip_round": rnd}, 4)
            for rnd in (0.0, 0.6)]
    assert tops[1] < 0.8 * tops[0], tops


def test_mouth_profile_bands():
    """The profile benchmark splits each column of the opening from its top to its bottom
    and divides by the lips' colour."""
    from benchmarks.mouth_profile import BINS, profile

    patch = np.zeros((48, 64, 3), np.uint8)
    inner = np.zeros((48, 64), np.float32)
    inner[10:22, 12:52] = 1.0
    patch[10:16, 12:52] = 200  # the top half of the opening bright, the rest dark
    patch[16:22, 12:52] = 50
    p = profile(patch, inner, np.array([100.0, 100.0, 100.0]))
    assert p.shape == (BINS, 3)
    assert np.allclose(p[: BINS // 2], 2.0) and np.allclose(p[BINS // 2:], 0.5)
    assert profile(patch, np.zeros_like(inner), np.ones(3)) is None


def test_a_wide_open_mouth_is_not_a_dark_void(identity):
    """Real wide openings are mostly teeth and tongue: band by band from the upper lip down
    (benchmarks/mouth_profile.py) their middle is 0.93-1.04 of the lips' luminance (the
    median over 22 people). The painted interior was a dark void there (0.41); it must stay
    well above that, and the upper teeth must stay brighter than the lips."""
    from benchmarks.mouth_profile import our_profiles

    wide = our_profiles(identity)["wide (aa)"]
    assert len(wide) >= 3
    lum = np.median(np.stack(wide).mean(-1), 0)
    assert lum[3] > 0.55, lum
    assert lum[:2].max() > 1.05, lum


def test_teeth_from_lips_are_no_brighter_than_real_teeth_rows(identity, monkeypatch):
    """TEETH_OVER_LIP is real teeth's highlight; shown over the whole row, a mid opening's
    upper-teeth bands were 1.3x the lips (real mouths: 1.06-1.16, the median over 22 people
    in benchmarks/mouth_profile.py). Teeth made from the lips' colour (a photo that shows
    none of its own) now stay under 1.25x there, and above the lips."""
    import dataclasses

    from benchmarks.mouth_profile import our_profiles

    prepare = texture_warp.prepare

    def from_lips(*a, **k):
        w = prepare(*a, **k)
        return dataclasses.replace(w, teeth_colour=texture_warp.teeth_from_lips(w.lip_colour))

    monkeypatch.setattr(texture_warp, "prepare", from_lips)
    mid = our_profiles(identity)["mid"]
    assert len(mid) >= 3
    lum = np.median(np.stack(mid).mean(-1), 0)
    assert 1.05 < lum[1:3].max() < 1.25, lum


def test_fill_vertices_sit_on_the_skin_and_follow_the_landmarks_spline(identity, warp):
    """Between the landmarks the mesh has fill vertices on a lattice (none in the lips or
    eyes, none crowding a landmark), moved by a thin-plate spline of the landmarks'
    motion: the spline passes through each control's own displacement and holds the
    border still."""
    src = warp.src_vertices
    n_fill = len(warp.fill_weights)
    fills = src[68 : 68 + n_fill]
    iod = texture_warp.IOD * np.sqrt(abs(np.linalg.det(warp.canon_to_roi[:, :2])))
    assert n_fill > 300
    for ring in (src[48:60], src[36:42], src[42:48]):
        inside = [cv2.pointPolygonTest(ring, (float(x), float(y)), True) for x, y in fills]
        assert max(inside) < -texture_warp.FILL_CLEARANCE * iod * 0.99
    gaps = np.linalg.norm(fills[:, None] - src[None, :68], axis=-1).min(1)
    assert gaps.min() > texture_warp.FILL_CLEARANCE * iod * 0.99
    anchors = src[68 + n_fill :]
    at_ctrl = texture_warp._fill_weights(src[:68].astype(np.float64), anchors, src[:68],
                                         iod)
    # read back at the landmarks, the (smoothing) spline is nearly the identity over them
    assert np.diag(at_ctrl).min() > 0.9
    assert np.abs(at_ctrl - np.diag(np.diag(at_ctrl))).max() < 0.1
    at_border = texture_warp._fill_weights(src[:68].astype(np.float64), anchors,
                                           anchors[::3], iod)
    assert np.abs(at_border).sum(1).max() < 0.02


def test_a_smile_bends_the_skin_smoothly(identity, monkeypatch):
    """The field's bends over the skin (its Laplacian, 99th percentile) in a broad smile and
    in surprise: the landmarks' own long triangles bend it along their edges only (seen as
    creases from nose to mouth corner); with the fill vertices the bends are spread out,
    over a third smaller (measured as benchmarks/warp_bends.py measures it)."""
    from benchmarks.warp_bends import bends

    audio = np.zeros(16000, np.float32)
    for emotion in ("happy", "surprise"):
        frames = [f.landmarks for f in FaceAnimator(identity, emotion=EmotionState(emotion, 1.0))
                  .render_all(audio)][10::10]
        smooth = bends(texture_warp.prepare(identity, expression=False), frames)
        monkeypatch.setattr(texture_warp, "FILL_SPACING", 0.0)
        coarse = texture_warp.prepare(identity, expression=False)
        monkeypatch.undo()
        assert len(coarse.fill_weights) == 0
        assert smooth < 0.67 * bends(coarse, frames), (emotion, smooth)


def test_a_shut_mouth_over_the_photos_open_one_has_no_dotted_lines(identity):
    """The built-in photo smiles with its teeth showing; shut (neutral, sad), its lips meet
    along a soft seam, with no dots of the seam's or the teeth's colour trailing across
    the lips (the inpainting's edge, and lip triangles squeezed to slivers, made them): no
    pixel on the lips, away from the seam and the corners, stands 40 grey levels darker
    than its 5x5 neighbourhood."""
    warp = texture_warp.prepare(identity)
    iod = texture_warp.IOD * np.sqrt(abs(np.linalg.det(warp.canon_to_roi[:, :2])))
    assert identity.expression[:2].sum() > 0.3  # the photo's mouth is open
    for emotion in ("neutral", "sad"):
        frames = list(FaceAnimator(identity, emotion=EmotionState(emotion, 1.0), warp=warp)
                      .render_all(np.zeros(16000, np.float32)))
        lm = frames[12].landmarks
        out = texture_warp.render_roi(warp, lm)
        dst = apply_affine(warp.canon_to_roi, lm)
        assert mouth_opening(lm) < 0.02
        lum = out.astype(np.float32).mean(-1)
        local = cv2.medianBlur(out, 5).astype(np.float32).mean(-1)
        lips = np.zeros(lum.shape, np.uint8)
        cv2.fillPoly(lips, [np.round(dst[48:60]).astype(np.int32)], 1)
        lips = cv2.dilate(lips, np.ones((7, 7), np.uint8))
        seam = np.zeros_like(lips)
        mid = np.vstack([dst[60], 0.5 * (dst[[61, 62, 63]] + dst[[67, 66, 65]]), dst[64]])
        cv2.polylines(seam, [np.round(mid).astype(np.int32)], False, 1, 1)
        seam = cv2.dilate(seam, np.ones((5, 5), np.uint8))
        ys, xs = np.mgrid[0 : lum.shape[0], 0 : lum.shape[1]]
        corner = np.minimum(np.hypot(xs - dst[48, 0], ys - dst[48, 1]),
                            np.hypot(xs - dst[54, 0], ys - dst[54, 1])) < 0.12 * iod
        m = (lips > 0) & (seam == 0) & ~corner
        assert m.sum() > 1000
        assert (local - lum)[m].max() < 40, (emotion, (local - lum)[m].max())


def test_a_smiles_upper_teeth_are_a_row_not_a_comb(identity):
    """In a broad smile the upper teeth read as one row that falls into the mouth's shadow
    toward the corners, as real smiles do, not as even bars cut by grey lines: across the
    crowns (0.03-0.08 IOD above the biting edge) the columns' brightness varies under 10%
    in the middle half of the row, and the outer fifth is at least 10% darker than the
    middle (the comb varied 14% and kept 93% at the sides)."""
    from etf_models.canonical_face import INNER_LIP_RING, IOD, UPPER_INNER

    warp = texture_warp.prepare(identity)
    frames = list(FaceAnimator(identity, emotion=EmotionState("happy", 1.0), warp=warp)
                  .render_all(np.zeros(16000, np.float32)))
    lm = frames[12].landmarks
    lum = texture_warp.render_roi(warp, lm).astype(np.float32).mean(-1)
    dst = apply_affine(warp.canon_to_roi, lm)
    inside = np.zeros(lum.shape, np.uint8)
    cv2.fillPoly(inside, [np.round(dst[INNER_LIP_RING]).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
    h, w = lum.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = warp.roi_to_canon
    u = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    v = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    n = warp.neutral
    edge = n[UPPER_INNER, 1].mean() + texture_warp.TEETH_EDGE_BELOW_LIP * IOD
    crowns = inside & (v < edge - 0.03 * IOD) & (v > edge - 0.08 * IOD)
    col = np.round(u).astype(int)
    cols = np.unique(col[crowns])
    assert len(cols) > 30  # the smile shows a long row of teeth
    prof = np.array([lum[crowns & (col == c)].mean() for c in cols])
    t = (cols - n[[60, 64], 0].mean()) / np.abs(cols - n[[60, 64], 0].mean()).max()
    middle = prof[np.abs(t) < 0.5]
    ripple = (np.percentile(middle, 95) - np.percentile(middle, 5)) / np.median(middle)
    assert ripple < 0.1, ripple
    assert prof[np.abs(t) > 0.8].mean() < 0.9 * np.median(middle)


def test_an_oo_shows_a_dark_opening_not_grey_teeth(identity):
    """Rounded lips stand forward of the teeth, which fall into their shade: at the
    engine's own oo (UW, W: inner lips 0.82 of their resting width) the opening is dark,
    under 0.55 of the lips' luminance (the teeth showed 70% lit there: 0.77, a grey
    slot), while an aa keeps its lit teeth (over 0.7)."""
    from engines.motion.face_motion import apply, build_fields
    from engines.render.landmark_default import SpeechLandmarkEngine
    from etf_models.canonical_face import INNER_LIP_RING

    warp = texture_warp.prepare(identity)
    fields = build_fields(identity.neutral)
    seen = {}
    for phone in ("UW", "W", "AA"):
        lm = apply(identity.neutral, fields, SpeechLandmarkEngine.viseme(phone, 1.0))
        out = texture_warp.render_roi(warp, lm).astype(np.float32)
        dst = apply_affine(warp.canon_to_roi, lm)
        inside = np.zeros(out.shape[:2], np.uint8)
        cv2.fillPoly(inside, [np.round(dst[INNER_LIP_RING]).astype(np.int32)], 1)
        inside = cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0
        assert inside.sum() > 150
        seen[phone] = out[inside].mean() / warp.lip_colour.mean()
    assert seen["UW"] < 0.55 and seen["W"] < 0.55, seen
    assert seen["AA"] > 0.7, seen
