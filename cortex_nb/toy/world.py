"""ToyBirds: a procedural 32 x 32 world of ten bird species, with ground-truth part masks.

Why this world exists
---------------------
CORTEX explains a class by the VQGAN codebook tokens that matter for it, and the paper's
headline edits (Fig. 4) swap *head* tokens to flip a bird's species.  ImageNet is far too
heavy for a CPU notebook, so this module draws a world where we know the answer:

* Ten species in five **head-only pairs** ``HEAD_PAIRS = (0,1), (2,3), ...``.  Within a pair,
  body, wing, tail and body shape are identical; only the head differs (head colour plus
  crown/crest/cap or beak colour/length, eye stripe, cheek patch).  So whatever separates the
  two members of a pair *must* be on the head, and ``masks`` tells us where the head is:
  a saliency method or token ranking can be scored against ground truth, and a head edit
  is a meaningful intervention.
* **Scenes correlate with species** (``scene_bias``, default 0.65).  Both members of a pair
  prefer the same scene, so the background tells a pair apart from other pairs but never the
  two members apart.  A frequency-based token explanation therefore picks up context
  (background/body tokens), as the paper reports it does, while a discriminative one should
  land on the head.
* Heads are drawn >= ~9 px across at 32 x 32 with details >= 2 px, because a 4x-downsampling
  tokenizer (8 x 8 tokens) wipes out 1-px features (see NOTES.md, "A toy-world tokenizer").

Rendering is analytic and vectorised over the batch: every part is an ellipse, disk or convex
polygon evaluated on a (B, S, S) coordinate grid with a one-pixel anti-aliased edge and
composited back to front; the part mask is the last part covering >= 1/3 of a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BACKGROUND, BODY, HEAD = 0, 1, 2
SCENES = ["sky", "foliage", "water", "ground"]
HEAD_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
SPECIES = ["red-headed finch", "white-crested finch", "yellow-faced warbler",
           "grey-hooded warbler", "black-capped tern", "brown-headed tern",
           "crested lark", "blue-headed lark", "green-headed tanager", "black-headed tanager"]

# ---- per-pair (body) table: everything here is shared by both members of a pair ----------
# pref scene, body rgb, wing rgb, wing-bar rgb (None = no bar), tail (length, tip half-width,
# fork depth), body semi-axes (a, b).  Scenes chosen so each bird contrasts with its backdrop.
_PAIRS = [
    (3, (95, 115, 165), (45, 60, 115), (225, 225, 235), (5.5, 2.6, 2.4), (7.5, 5.2)),  # finch
    (0, (120, 140, 55), (85, 70, 45), None, (6.5, 0.8, 0.0), (7.8, 4.8)),              # warbler
    (2, (228, 228, 222), (140, 148, 160), None, (4.0, 2.2, 0.0), (8.0, 5.0)),          # tern
    (1, (150, 105, 62), (95, 62, 35), (220, 195, 145), (4.5, 3.4, 0.0), (7.2, 5.6)),   # lark
    (0, (225, 120, 40), (35, 30, 30), None, (5.5, 2.0, 1.2), (7.5, 5.4)),              # tanager
]
# ---- per-species (head) table -----------------------------------------------------------
# head rgb, cap rgb|None, crest (rgb, height)|None, beak (rgb, length, half-width),
# cheek rgb|None, eye stripe rgb|None, white eye ring?
_HEADS = [
    ((205, 45, 40), None, None, ((235, 200, 60), 2.2, 1.9), None, None, False),
    ((236, 236, 228), None, ((25, 25, 30), 3.5), ((30, 30, 30), 4.0, 1.5), None, None, False),
    ((240, 215, 50), None, None, ((40, 40, 40), 3.6, 1.45), None, (25, 25, 25), False),
    ((125, 125, 138), (200, 35, 35), None, ((240, 140, 40), 2.2, 1.7), None, None, False),
    ((236, 236, 230), (20, 20, 25), None, ((240, 115, 30), 4.2, 1.55), None, None, False),
    ((100, 62, 40), None, None, ((200, 30, 30), 2.6, 1.6), None, None, True),
    ((212, 182, 122), None, ((105, 70, 40), 3.8), ((120, 120, 120), 2.4, 1.5), None, None, False),
    ((55, 80, 175), None, None, ((20, 20, 20), 2.2, 1.9), (240, 240, 240), None, False),
    ((40, 165, 85), None, None, ((230, 230, 205), 2.4, 1.6), None, None, False),
    ((25, 25, 28), None, None, ((245, 200, 40), 4.0, 1.5), None, None, True),
]


def _table():
    """Flatten the two tables above into (10, ...) float32 arrays indexed by species id."""
    rows = []
    for s in range(10):
        pref, body, wing, bar, tail, ab = _PAIRS[s // 2]
        head, cap, crest, (beak, bl, bw), cheek, stripe, ring = _HEADS[s]
        rows.append(dict(pref=pref, body=body, wing=wing, bar=bar or body, has_bar=bar is not None,
                         tail=tail, ab=ab, head=head, cap=cap or head, has_cap=cap is not None,
                         crest=crest[0] if crest else head, crest_h=crest[1] if crest else 0.0,
                         beak=beak, beak_lw=(bl, bw), cheek=cheek or head,
                         has_cheek=cheek is not None, stripe=stripe or head,
                         has_stripe=stripe is not None, ring=ring))
    return {k: np.asarray([r[k] for r in rows], dtype=np.float32) for k in rows[0]}


_T = _table()
PREFERRED_SCENE = _T["pref"].astype(np.int64)        # (10,) preferred scene id per species
# Geometry in "units" = pixels of a 32 x 32 image at scale 1; bird faces +x, y points down.
_BODY_C, _HEAD_C, _HEAD_R, _TILT = (-1.5, 2.5), (4.5, -5.0), 5.5, np.deg2rad(35.0)
_BBOX = (-12.5, -14.5, 14.5, 11.75)  # local bbox (xmin, ymin, xmax, ymax) of all species, with slack


@dataclass(frozen=True)
class ToyBatch:
    """A rendered batch.  images (B,S,S,3) uint8; labels (B,) int64 species 0..9;
    masks (B,S,S) uint8 in {BACKGROUND, BODY, HEAD}; scenes (B,) int64 index into SCENES."""
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    scenes: np.ndarray


# ---- shape primitives: coverage in [0, 1] from an approximate signed distance (units) -----
def _cov(sdf, k):
    """One-pixel anti-aliased coverage; k = pixels per unit, (B,1,1)."""
    a = sdf * -k
    a += 0.5
    return np.clip(a, 0.0, 1.0, out=a)


def _affine(x, y, ax, ay, c):
    """ax*x + ay*y + c with few temporaries (coefficients are scalars or (b,1,1))."""
    out = x * ax
    out += y * ay
    out += c
    return out


def _ellipse(x, y, cx, cy, a, b, ang=0.0):
    """Approximate signed distance to an ellipse centred (cx, cy) with semi-axis a along
    direction ang (radians, counter-clockwise on screen) and b across it."""
    c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    u = _affine(x, y, c / a, -s / a, -(cx * c - cy * s) / a)   # (dx cos - dy sin) / a
    v = _affine(x, y, s / b, c / b, -(cx * s + cy * c) / b)    # (dx sin + dy cos) / b
    u *= u
    v *= v
    u += v
    np.sqrt(u, out=u)
    u -= 1.0
    u *= np.minimum(a, b)
    return u


def _polygon(x, y, pts, bevel=()):
    """Signed distance (max of edge half-planes) to a convex polygon; pts = [(px, py), ...]
    with scalars or (B,1,1) arrays, any winding.

    Edge half-planes alone underestimate the distance beyond an acute vertex (a thin beak
    would smear a faint streak px past its tip), so the vertices listed in ``bevel`` also get
    a half-plane whose normal bisects their two edge normals (the polygon lies inside it)."""
    area = sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(pts, pts[1:] + pts[:1]))
    sign = np.sign(area)
    normals = []
    for (px, py), (qx, qy) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = qx - px, qy - py
        inv = sign / np.sqrt(ex * ex + ey * ey)
        normals.append((ey * inv, -ex * inv))           # outward unit normal of edge p -> q
    planes = [(n, p) for n, p in zip(normals, pts)]
    for i in bevel:                                     # normals[i-1] arrives at, [i] leaves pts[i]
        planes.append(((normals[i - 1][0] + normals[i][0], normals[i - 1][1] + normals[i][1]),
                       pts[i]))
    d = None
    for (nx, ny), (px, py) in planes:
        inv = 1.0 / np.sqrt(nx * nx + ny * ny)
        e = _affine(x, y, nx * inv, ny * inv, -(px * nx + py * ny) * inv)
        d = e if d is None else np.maximum(d, e, out=d)
    return d


# ---- backgrounds (channel-first (n,3,S,S): numpy broadcasts fast over the long last axes) --
def _smooth_noise(rng, n, size, cells):
    """(n, size, size) value noise in [0,1]: a random (cells+1)^2 grid, smoothstep-upsampled."""
    g = rng.random((n, cells + 1, cells + 1), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = g[:, i] * (1 - f)[None, :, None] + g[:, i + 1] * f[None, :, None]
    return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


def _mix(c0, c1, w):
    """Blend two rgb colours with per-pixel weight w (n,S,S) -> (n,3,S,S)."""
    c0 = np.asarray(c0, np.float32)[None, :, None, None]
    return c0 + (np.asarray(c1, np.float32)[None, :, None, None] - c0) * w[:, None]


def _scene(rng, kind, n, size):
    """n backgrounds of one scene kind, (n, 3, size, size) float32 in 0..255."""
    yy = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :, None]
    xx = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, None, :]
    shift = rng.uniform(-12, 12, (n, 1, 1, 1)).astype(np.float32)  # per-image tint
    if kind == 0:    # sky: blue vertical gradient with soft white clouds
        img = _mix((95, 150, 225), (180, 212, 242), np.broadcast_to(yy, (n, size, size)))
        cloud = np.clip((_smooth_noise(rng, n, size, 3) - 0.55) * 4, 0, 1)
        img += (np.float32(245) - img) * (0.8 * cloud[:, None])
    elif kind == 1:  # foliage: blotchy dark/light greens at two frequencies
        w = 0.6 * _smooth_noise(rng, n, size, 4) + 0.4 * _smooth_noise(rng, n, size, 9)
        img = _mix((25, 70, 30), (95, 160, 60), np.clip((w - 0.25) * 2, 0, 1))
    elif kind == 2:  # water: teal with wavy horizontal stripes
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
        wave = np.sin(2 * np.pi * (6 * yy + 0.25 * np.sin(2 * np.pi * 2 * xx + ph)) + ph)
        img = _mix((25, 85, 125), (80, 150, 185), 0.5 + 0.5 * wave)
    else:            # ground: sandy earth with darker blotches and speckle
        w = 0.7 * _smooth_noise(rng, n, size, 5) + 0.3 * rng.random((n, size, size), np.float32)
        img = _mix((205, 180, 135), (150, 120, 80), np.clip((w - 0.3) * 2, 0, 1))
    return img + shift


# ---- the bird ----------------------------------------------------------------------------
def _parts(x, y, T):
    """Yield (sdf, rgb (b,3), part, on (b,) or None) for every part, back to front.
    x, y: (b,S,S) bird-local coordinates; T: the species table rows of this chunk."""
    col = lambda v: v.reshape(-1, 1, 1)  # noqa: E731
    ex, ey = np.cos(_TILT), -np.sin(_TILT)                     # body axis, pointing up-right
    a, b = col(T["ab"][:, 0]), col(T["ab"][:, 1])
    L, tw, fork = (col(T["tail"][:, i]) for i in range(3))
    rx, ry = _BODY_C[0] - 0.8 * a * ex, _BODY_C[1] - 0.8 * a * ey   # tail root, inside body
    tx, ty = -np.cos(np.deg2rad(40)), np.sin(np.deg2rad(40))        # tail points down-left
    nx, ny = -ty, tx
    tail = _polygon(x, y, [(rx + 1.8 * nx, ry + 1.8 * ny), (rx - 1.8 * nx, ry - 1.8 * ny),
                           (rx + L * tx - tw * nx, ry + L * ty - tw * ny),
                           (rx + L * tx + tw * nx, ry + L * ty + tw * ny)], bevel=(2, 3))
    notch = _polygon(x, y, [(rx + (L - fork) * tx, ry + (L - fork) * ty),
                            (rx + (L + 1) * tx - tw * nx, ry + (L + 1) * ty - tw * ny),
                            (rx + (L + 1) * tx + tw * nx, ry + (L + 1) * ty + tw * ny)])
    yield np.where(fork > 0, np.maximum(tail, -notch), tail), T["wing"], BODY, None
    yield _ellipse(x, y, *_BODY_C, a, b, _TILT), T["body"], BODY, None
    wx, wy = _BODY_C[0] - 1.2, _BODY_C[1] + 0.4
    wing = _ellipse(x, y, wx, wy, 0.75 * a, 0.55 * b, _TILT - 0.1)
    yield wing, T["wing"], BODY, None
    # wing bar: a 2.4-unit stripe across the wing (perpendicular to the body axis)
    yield np.maximum(wing, np.abs((x - wx) * ex + (y - wy) * ey + 0.5) - 1.2), \
        T["bar"], BODY, T["has_bar"]

    hx, hy, r = _HEAD_C[0], _HEAD_C[1], _HEAD_R
    yield _polygon(x, y, [(hx - 3.0, hy - r + 1.5), (hx + 1.5, hy - r + 0.8),   # swept crest
                          (hx - 3.8, hy - r - col(T["crest_h"]))], bevel=(2,)), \
        T["crest"], HEAD, T["crest_h"] > 0
    head = _ellipse(x, y, hx, hy, r, r)
    yield head, T["head"], HEAD, None
    yield np.maximum(head, y - (hy - 1.2)), T["cap"], HEAD, T["has_cap"]       # top ~40 %
    yield _ellipse(x, y, hx + 0.3, hy + 2.2, 2.6, 2.2), T["cheek"], HEAD, T["has_cheek"]
    yield np.maximum(head, np.abs(y - (hy - 1.0)) - 1.1), T["stripe"], HEAD, T["has_stripe"]
    bl, bw = col(T["beak_lw"][:, 0]), col(T["beak_lw"][:, 1])
    yield _polygon(x, y, [(hx + r - 1.5, hy - bw + 0.3), (hx + r + bl, hy + 0.6),
                          (hx + r - 1.5, hy + bw + 0.3)], bevel=(1,)), T["beak"], HEAD, None
    n = len(T["head"])
    yield _ellipse(x, y, hx + 2.0, hy - 1.0, 2.3, 2.3), np.full((n, 3), 245, np.float32), \
        HEAD, T["ring"]
    yield _ellipse(x, y, hx + 2.0, hy - 1.0, 1.3, 1.3), np.full((n, 3), 15, np.float32), HEAD, None


# A pixel belongs to a part once the part covers a third of it: thin tips (beak, crest, tail
# fork) are then still in the mask, and pixels a head edit visibly changes are labelled HEAD.
_MASK_COVER = 1.0 / 3.0


def _draw(img, mask, T, cx, cy, k, tilt, flip, gain):
    """Composite birds onto img (b,3,S,S) float32 in place and fill mask (b,S,S), one chunk.

    Front-to-back alpha compositing turned into per-part weights, then one batched matmul
    (b,3,P) @ (b,P,S*S): ~5x faster than blending RGB part by part."""
    b, _, S, _ = img.shape
    col = lambda v: np.asarray(v, np.float32).reshape(-1, 1, 1)  # noqa: E731
    p = np.arange(S, dtype=np.float32) + 0.5
    dx, dy = p[None, None, :] - col(cx), p[None, :, None] - col(cy)
    cs, sn, kk = col(np.cos(tilt)), col(np.sin(tilt)), col(k)
    # pixel -> bird-local units: inverse of (flip, rotate by tilt, scale by k, translate)
    x = (dx * cs + dy * sn) / kk * col(flip)
    y = (dy * cs - dx * sn) / kk
    covs, rgbs = [], []
    for sdf, rgb, part, on in _parts(x, y, T):
        a = _cov(sdf, kk) if on is None else _cov(sdf, kk) * col(on)
        mask[a >= _MASK_COVER] = part           # painter's order: the last covering part wins
        covs.append(a)
        rgbs.append(rgb)
    P = len(covs)
    W = np.empty((b, P, S, S), np.float32)
    trans = np.ones((b, S, S), np.float32)      # transmittance of everything in front
    for i in reversed(range(P)):
        np.multiply(covs[i], trans, out=W[:, i])
        trans *= 1 - covs[i]
    rgb = np.stack(rgbs, 2) * gain[:, :, None]  # (b, 3, P)
    img *= trans[:, None]
    img += np.matmul(rgb, W.reshape(b, P, S * S)).reshape(b, 3, S, S)


_CHUNK = 256  # images per vectorised pass: keeps the (chunk,S,S) temporaries cache-sized


def render(labels, seed: int, image_size: int = 32, scene_bias: float = 0.65) -> ToyBatch:
    """Render one bird per label.

    labels: array-like (B,) of ints in 0..9.  Returns ToyBatch with images (B,S,S,3) uint8,
    masks (B,S,S) uint8, scenes (B,) int64, S = image_size (32 required; 64 scales shapes).
    Each image's scene is its species' preferred scene with probability ``scene_bias``,
    otherwise one of the other three uniformly.  Same labels + seed -> identical output.
    """
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise ValueError("labels must be in 0..9")
    B, S = lab.size, int(image_size)
    rng = np.random.default_rng(seed)

    # scene: preferred w.p. scene_bias, else uniform over the other three
    pref = PREFERRED_SCENE[lab]
    other = (pref + rng.integers(1, 4, B)) % 4
    scenes = np.where(rng.random(B) < scene_bias, pref, other).astype(np.int64)
    img = np.empty((B, 3, S, S), np.float32)
    for kind in range(4):
        idx = np.flatnonzero(scenes == kind)
        if idx.size:
            img[idx] = _scene(rng, kind, idx.size, S)

    # pose: tilt, flip, scale, position (bird kept inside the frame with a 1-px margin)
    u = rng.random(B)
    tilt = rng.uniform(-0.15, 0.15, B)
    flip = np.where(rng.random(B) < 0.5, -1.0, 1.0)
    cs, sn = np.cos(tilt)[:, None], np.sin(tilt)[:, None]
    bx = np.array([_BBOX[0], _BBOX[2], _BBOX[2], _BBOX[0]])[None] * flip[:, None]
    by = np.array([_BBOX[1], _BBOX[1], _BBOX[3], _BBOX[3]])[None]
    ox, oy = bx * cs - by * sn, bx * sn + by * cs                  # bbox corners, rotated
    span = np.maximum(ox.max(1) - ox.min(1), oy.max(1) - oy.min(1))
    # scale uniform in [0.8, largest that fits] (<= 1.15): ~0.8-1.05; head ~9-11.5 px at S=32
    k = (0.8 + u * (np.minimum(1.15, 30.0 / span) - 0.8)) * S / 32.0   # pixels per unit
    lo_x, hi_x = 1 - k * ox.min(1), S - 1 - k * ox.max(1)
    lo_y, hi_y = 1 - k * oy.min(1), S - 1 - k * oy.max(1)
    cx = lo_x + (hi_x - lo_x) * rng.random(B)
    cy = lo_y + (hi_y - lo_y) * rng.random(B)
    # colour jitter: small per-image, per-channel gain on bird colours; global brightness
    gain = rng.uniform(0.95, 1.05, (B, 3)).astype(np.float32)
    bright = rng.uniform(0.92, 1.08, (B, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((B, 3, S, S), dtype=np.float32)    # mild sensor noise

    # all randomness is drawn above, so chunking cannot change the output
    T = {key: v[lab] for key, v in _T.items()}
    mask = np.zeros((B, S, S), np.uint8)
    for s in range(0, B, _CHUNK):
        sl = slice(s, s + _CHUNK)
        _draw(img[sl], mask[sl], {key: v[sl] for key, v in T.items()},
              cx[sl], cy[sl], k[sl], tilt[sl], flip[sl], gain[sl])
    img *= bright
    img += 2.0 * noise
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return ToyBatch(images=np.ascontiguousarray(images), labels=lab, masks=mask, scenes=scenes)


def sample(n: int, seed: int, n_classes: int = 10, image_size: int = 32,
           scene_bias: float = 0.65, balanced: bool = True) -> ToyBatch:
    """n images of species 0..n_classes-1.  balanced=True: labels cycle 0..n_classes-1 and are
    then shuffled by seed (class counts differ by at most one); else drawn uniformly."""
    if not 1 <= n_classes <= 10:
        raise ValueError("n_classes must be in 1..10")
    s_lab, s_img = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(s_lab)
    labels = (rng.permutation(np.arange(n) % n_classes) if balanced
              else rng.integers(0, n_classes, n))
    return render(labels, int(s_img.generate_state(1)[0]), image_size, scene_bias)


def to_tensor(images_uint8) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) float32 in [-1, 1] (taming's convention)."""
    x = torch.as_tensor(np.asarray(images_uint8, dtype=np.uint8))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def from_tensor(x) -> np.ndarray:
    """(B,3,H,W) in [-1, 1] -> (B,H,W,3) uint8, rounded and clamped; exact inverse of to_tensor."""
    x = torch.as_tensor(x).detach().float().cpu()
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ToyBirdsDataset(torch.utils.data.IterableDataset):
    """Stream of (image (3,S,S) float32 in [-1,1], label int) pairs for training.

    n=None: infinite stream, rendered in chunks of ``chunk`` balanced images with seeds derived
    from (seed, worker id, chunk index), so DataLoader workers never repeat each other.
    n=int: a fixed set, exactly ``sample(n, seed, ...)``, iterated in order (one pass).
    """

    def __init__(self, n=None, seed: int = 0, n_classes: int = 10, image_size: int = 32,
                 scene_bias: float = 0.65, chunk: int = 512):
        super().__init__()
        self.n, self.seed, self.chunk = n, seed, chunk
        self.kw = dict(n_classes=n_classes, image_size=image_size, scene_bias=scene_bias)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if self.n is not None:
            b = sample(self.n, self.seed, **self.kw)
            x, y = to_tensor(b.images), torch.as_tensor(b.labels)
            for i in range(wid, self.n, nw):
                yield x[i], int(y[i])
            return
        i = 0
        while True:
            s = int(np.random.SeedSequence([self.seed, wid, i]).generate_state(1)[0])
            b = sample(self.chunk, s, **self.kw)
            x = to_tensor(b.images)
            for j in range(self.chunk):
                yield x[j], int(b.labels[j])
            i += 1
