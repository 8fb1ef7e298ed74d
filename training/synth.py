"""Synthetic block scenes: toy cubes on a table, drawn with numpy and PIL, with seed_blocks-style captions.

A scene is a single stack of cubes (or an empty table). `render` draws it under one `Domain` (camera,
light, table); `write_dataset` writes a balanced, deterministic dataset in the seed_blocks JSONL format.
Geometry: the table is the plane z = 0, one cube side is about 1 unit, the camera looks down at the table
from `elevation_deg` above the horizon.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from blip_lora_core.atomic import atomic_write_text, staged_path, write_jsonl
from blip_lora_core.errors import ConfigError, DataError

# Albedo of each cube colour under white light, 0-255 sRGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 32, 38),
    "green": (36, 150, 84),
    "blue": (28, 128, 215),
    "wood": (208, 176, 136),
    "yellow": (236, 200, 36),
    "orange": (236, 118, 28),
    "purple": (122, 60, 172),
    "white": (236, 236, 230),
}
DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "wood", "yellow")
EMPTY_CAPTION = "No cube is visible in the image"
_SUPERSAMPLE = 2
_IMAGE_DIR = "images"
_META_FILE = "synth.json"
_ANNOTATIONS = "annotations.jsonl"

Range = tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """One stack of cubes, top first: () is an empty table, ("blue", "green") is blue on top of green."""

    cubes: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [c for c in self.cubes if c not in COLOURS]
        if unknown:
            raise ConfigError(f"unknown cube colour(s) {unknown}; known: {sorted(COLOURS)}")

    @property
    def slug(self) -> str:
        """File-name friendly name: "empty", "red", "blue_on_green"."""
        return "_on_".join(self.cubes) if self.cubes else "empty"

    def pairs(self) -> list[tuple[str, str]]:
        """The (top, bottom) colour pairs of touching cubes, top first."""
        return list(zip(self.cubes, self.cubes[1:], strict=False))


@dataclass(frozen=True)
class Domain:
    """Ranges (low, high) that each render draws its camera, light, table and sensor from."""

    elevation_deg: Range  # camera above the horizon
    azimuth_deg: Range  # camera around the vertical axis
    roll_deg: Range
    distance: Range  # camera to its target, in cube sides
    focal: Range  # focal length in image widths
    spread: float  # cube stacks stand within this radius of the camera's target
    table_rgb: tuple[int, int, int]
    table_jitter: float  # per-channel relative jitter of the table albedo
    grain: float  # strength of the wood-grain texture (0: plain table)
    wall_rgb: tuple[int, int, int]  # seen beyond the table's far edge
    wall_distance: Range  # far edge of the table behind the target, in cube sides
    light_rgb: tuple[float, float, float]
    light_jitter: float
    intensity: Range
    ambient: Range
    light_elevation_deg: Range
    shadow_blur: Range  # in pixels of the output image
    vignette: Range
    noise_sigma: Range  # sensor noise, 0-255 scale


DOMAINS: dict[str, Domain] = {
    # Like seed_blocks: light grey-white table, neutral light, camera looking down at 35-55 degrees.
    "table": Domain(
        elevation_deg=(36, 54), azimuth_deg=(-25, 25), roll_deg=(-4, 4), distance=(8.0, 10.0),
        focal=(1.05, 1.25), spread=1.6, table_rgb=(214, 212, 208), table_jitter=0.03, grain=0.0,
        wall_rgb=(120, 120, 125), wall_distance=(40, 60), light_rgb=(1.0, 1.0, 1.0), light_jitter=0.03,
        intensity=(0.9, 1.05), ambient=(0.45, 0.55), light_elevation_deg=(50, 75),
        shadow_blur=(1.5, 3.0), vignette=(0.05, 0.2), noise_sigma=(1.5, 4.0),
    ),
    # Another room: dark wooden table, warm low light, low close camera, tilted, a wall behind.
    "shifted": Domain(
        elevation_deg=(18, 30), azimuth_deg=(-70, 70), roll_deg=(-12, 12), distance=(5.5, 7.0),
        focal=(0.95, 1.15), spread=0.9, table_rgb=(124, 82, 50), table_jitter=0.1, grain=0.35,
        wall_rgb=(70, 78, 92), wall_distance=(3.5, 7.0), light_rgb=(1.0, 0.86, 0.66), light_jitter=0.05,
        intensity=(1.0, 1.25), ambient=(0.3, 0.4), light_elevation_deg=(25, 45),
        shadow_blur=(0.8, 1.5), vignette=(0.2, 0.45), noise_sigma=(4.0, 8.0),
    ),
    # The seed_blocks room at dusk: same table and camera, dim bluish light, strong noise.
    "dark": Domain(
        elevation_deg=(36, 54), azimuth_deg=(-25, 25), roll_deg=(-4, 4), distance=(8.0, 10.0),
        focal=(1.05, 1.25), spread=1.6, table_rgb=(214, 212, 208), table_jitter=0.03, grain=0.0,
        wall_rgb=(60, 60, 66), wall_distance=(40, 60), light_rgb=(0.82, 0.9, 1.0), light_jitter=0.04,
        intensity=(0.35, 0.5), ambient=(0.4, 0.5), light_elevation_deg=(40, 70),
        shadow_blur=(2.0, 4.0), vignette=(0.3, 0.5), noise_sigma=(7.0, 11.0),
    ),
}


def caption_for(scene: Scene) -> str:
    """The seed_blocks caption: "One red cube", "A blue cube on top of a green cube", or the empty one."""
    if not scene.cubes:
        return EMPTY_CAPTION
    if len(scene.cubes) == 1:
        return f"One {scene.cubes[0]} cube"
    return " on top of ".join(f"a {c} cube" for c in scene.cubes).capitalize()


def all_scenes(colours: Sequence[str], max_stack: int = 3) -> list[Scene]:
    """The empty table plus every stack of 1..max_stack distinct colours (ordered, top first)."""
    _check_colours(colours)
    if max_stack < 0:
        raise ConfigError(f"max_stack must be >= 0, got {max_stack}")
    scenes = [Scene(())]
    for height in range(1, max_stack + 1):
        scenes += [Scene(tuple(p)) for p in itertools.permutations(colours, height)]
    return scenes


def select_scenes(
    colours: Sequence[str],
    max_stack: int,
    holdout_pairs: Sequence[tuple[str, str]] = (),
    only_pairs: bool = False,
) -> list[Scene]:
    """Scenes of a compositional split: without any held-out (top, bottom) pair, or (only_pairs) only those."""
    held = {tuple(p) for p in holdout_pairs}
    _check_colours([c for p in held for c in p])
    if only_pairs and not held:
        raise ConfigError("only_pairs needs at least one holdout pair")
    scenes = [s for s in all_scenes(colours, max_stack) if bool(held & set(s.pairs())) == only_pairs]
    if not scenes:
        raise ConfigError(f"no scene left for colours {list(colours)}, max_stack {max_stack}, holdout {held}")
    return scenes


def render(
    scene: Scene, rng: np.random.Generator, domain: str = "table", size: tuple[int, int] = (160, 120)
) -> Image.Image:
    """Draw `scene` under a random camera, light and table of `domain`; returns an RGB image of `size` (W, H)."""
    dom = _domain(domain)
    width, height = size
    if width < 8 or height < 8:
        raise ConfigError(f"image size must be at least 8x8, got {width}x{height}")
    big = (width * _SUPERSAMPLE, height * _SUPERSAMPLE)
    light = _sample_light(dom, rng)
    cam, cubes = _place(_sample_cubes(scene, rng), dom, rng, big)
    image = _draw_table(dom, cam, light, rng, big)
    image = _draw_shadow(image, cubes, cam, light, rng.uniform(*dom.shadow_blur) * _SUPERSAMPLE)
    image = _draw_cubes(image, cubes, cam, light, rng)
    image = image.resize(size, Image.Resampling.BOX)
    return _add_noise(image, rng.uniform(*dom.noise_sigma), rng)


def write_dataset(
    out_dir: Path,
    n: int,
    *,
    seed: int,
    domain: str = "table",
    colours: Sequence[str] = DEFAULT_COLOURS,
    max_stack: int = 2,
    holdout_pairs: Sequence[tuple[str, str]] = (),
    only_pairs: bool = False,
    size: tuple[int, int] = (160, 120),
    image_format: str = "png",
) -> Path:
    """Write out_dir/images/* and out_dir/annotations.jsonl (seed_blocks format); returns the JSONL path.

    Scenes cycle in a seeded shuffled order (balanced, every scene appears once n >= number of scenes);
    image i uses the generator seeded with (seed, i), so the same arguments give the same bytes. The
    dataset is written to a staging folder and renamed (atomic.staged_path), so a half-written one never
    appears and a failure keeps the previous one. An existing
    out_dir is replaced only when it is empty or an earlier synthetic dataset.
    """
    out_dir = Path(out_dir)
    _check_write_args(n, seed, domain, image_format)
    scenes = select_scenes(colours, max_stack, holdout_pairs, only_pairs)
    _check_replaceable(out_dir)
    with staged_path(out_dir) as staged:
        staged.mkdir()
        lines = _write_images(staged, scenes, n, seed, domain, size, image_format)
        write_jsonl(staged / _ANNOTATIONS, lines)
        meta = dict(n=n, seed=seed, domain=domain, colours=list(colours), max_stack=max_stack,
                    holdout_pairs=[list(p) for p in holdout_pairs], only_pairs=only_pairs,
                    size=list(size), domain_params=asdict(DOMAINS[domain]))
        atomic_write_text(staged / _META_FILE, json.dumps(meta, indent=2) + "\n")
    return out_dir / _ANNOTATIONS


# ---------------------------------------------------------------- dataset helpers


def _check_colours(colours: Sequence[str]) -> None:
    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ConfigError(f"unknown cube colour(s) {unknown}; known: {sorted(COLOURS)}")


def _domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise ConfigError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[name]


def _check_write_args(n: int, seed: int, domain: str, image_format: str) -> None:
    if n < 1:
        raise ConfigError(f"need at least one image, got n={n}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if image_format not in ("png", "jpg"):
        raise ConfigError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    _domain(domain)


def _scene_order(scenes: list[Scene], n: int, seed: int) -> list[Scene]:
    """n scenes: whole shuffled cycles through `scenes`, each cycle reshuffled."""
    rng = np.random.default_rng(seed)
    order: list[Scene] = []
    while len(order) < n:
        order += [scenes[i] for i in rng.permutation(len(scenes))]
    return order[:n]


def _write_images(
    root: Path, scenes: list[Scene], n: int, seed: int, domain: str, size: tuple[int, int], fmt: str
) -> list[dict[str, str]]:
    (root / _IMAGE_DIR).mkdir()
    lines = []
    for i, scene in enumerate(_scene_order(scenes, n, seed)):
        image = render(scene, np.random.default_rng([seed, i]), domain, size)
        rel = f"{_IMAGE_DIR}/{i:06d}_{scene.slug}.{fmt}"
        if fmt == "png":
            image.save(root / rel, format="PNG")
        else:
            image.save(root / rel, format="JPEG", quality=92)
        lines.append({"image": rel, "text": caption_for(scene)})
    return lines


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder")
    entries = {p.name for p in out_dir.iterdir()}
    if entries and not (_META_FILE in entries and entries <= {_META_FILE, _ANNOTATIONS, _IMAGE_DIR}):
        raise DataError(f"{out_dir} is not empty and is not a synthetic dataset; refusing to replace it")


# ---------------------------------------------------------------- scene sampling and camera


@dataclass(frozen=True)
class _Cube:
    centre: tuple[float, float]  # on the table plane
    bottom: float
    side: float
    yaw: float  # radians
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # (3,) unit vector towards the light
    rgb: np.ndarray  # (3,) colour times intensity
    ambient: float


@dataclass(frozen=True)
class _Camera:
    position: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3) rows: right, up, forward
    focal: float  # in pixels
    roll: float  # radians
    centre: tuple[float, float]  # principal point in pixels
    forward_flat: np.ndarray  # (2,) horizontal viewing direction
    target: np.ndarray  # (3,)
    wall: float  # far edge of the table, horizontal distance behind the target


def _sample_light(dom: Domain, rng: np.random.Generator) -> _Light:
    elevation = np.radians(rng.uniform(*dom.light_elevation_deg))
    azimuth = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])
    tint = np.array(dom.light_rgb) * (1 + rng.uniform(-dom.light_jitter, dom.light_jitter, 3))
    return _Light(direction, tint * rng.uniform(*dom.intensity), float(rng.uniform(*dom.ambient)))


def _sample_cubes(scene: Scene, rng: np.random.Generator) -> list[_Cube]:
    """The stack bottom first, at the origin: each cube a little shifted and turned on the one below."""
    scale = rng.uniform(0.92, 1.08)
    cubes: list[_Cube] = []
    x = y = bottom = 0.0
    yaw = rng.uniform(0, np.pi / 2)
    for colour in reversed(scene.cubes):
        side = scale * rng.uniform(0.97, 1.03)
        if cubes:
            x, y = x + rng.uniform(-0.15, 0.15) * side, y + rng.uniform(-0.15, 0.15) * side
            yaw += rng.uniform(-0.4, 0.4)
        cubes.append(_Cube((x, y), bottom, side, yaw, COLOURS[colour]))
        bottom += side
    return cubes


def _move(cubes: list[_Cube], dx: float, dy: float) -> list[_Cube]:
    return [_Cube((c.centre[0] + dx, c.centre[1] + dy), c.bottom, c.side, c.yaw, c.rgb) for c in cubes]


def _place(
    cubes: list[_Cube], dom: Domain, rng: np.random.Generator, size: tuple[int, int]
) -> tuple[_Camera, list[_Cube]]:
    """Sample a camera and move the stack to a random spot that keeps it inside the frame."""
    cam = _sample_camera(dom, rng, size, sum(c.side for c in cubes))
    tries = 40
    for attempt in range(tries):
        radius = dom.spread * np.sqrt(rng.uniform()) * (1 - attempt / tries)
        angle = rng.uniform(0, 2 * np.pi)
        moved = _move(cubes, radius * np.cos(angle), radius * np.sin(angle))
        if _inside(moved, cam, size):
            return cam, moved
    return cam, moved  # the last try stands at the target itself


def _sample_camera(dom: Domain, rng: np.random.Generator, size: tuple[int, int], height: float) -> _Camera:
    elevation = np.radians(rng.uniform(*dom.elevation_deg))
    azimuth = np.radians(rng.uniform(*dom.azimuth_deg))
    # Taller stacks are seen from a little further away so they fit the frame.
    distance = rng.uniform(*dom.distance) * (1 + 0.12 * max(0.0, height - 1.5))
    target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), 0.4 + 0.4 * height])
    flat = np.array([-np.sin(azimuth), np.cos(azimuth)])  # horizontal viewing direction
    position = target - distance * np.array([np.cos(elevation) * flat[0], np.cos(elevation) * flat[1],
                                             -np.sin(elevation)])
    forward = (target - position) / distance
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    width, pixels_high = size
    jitter = rng.uniform(-0.03, 0.03, 2) * width  # principal point off the image centre
    centre = (width / 2 + jitter[0], pixels_high / 2 + jitter[1])
    return _Camera(position, np.stack([right, up, forward]), rng.uniform(*dom.focal) * width,
                   np.radians(rng.uniform(*dom.roll_deg)), centre, flat, target,
                   float(rng.uniform(*dom.wall_distance)))


def _project(cam: _Camera, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) to pixel coordinates (N, 2)."""
    local = (points - cam.position) @ cam.axes.T
    x, y = local[:, 0] / local[:, 2], -local[:, 1] / local[:, 2]
    cos, sin = np.cos(cam.roll), np.sin(cam.roll)
    u, v = cos * x - sin * y, sin * x + cos * y
    return np.stack([cam.centre[0] + cam.focal * u, cam.centre[1] + cam.focal * v], axis=1)


def _inside(cubes: list[_Cube], cam: _Camera, size: tuple[int, int]) -> bool:
    if not cubes:
        return True
    pixels = _project(cam, np.concatenate([_corners(c) for c in cubes]))
    margin = 0.05 * size[0]
    return bool((pixels.min(0) >= margin).all() and (pixels[:, 0] <= size[0] - margin).all()
                and (pixels[:, 1] <= size[1] - margin).all())


# ---------------------------------------------------------------- drawing


def _corners(cube: _Cube) -> np.ndarray:
    """(8, 3) corners: bottom four (counter-clockwise), then the top four above them."""
    half = cube.side / 2
    square = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    cos, sin = np.cos(cube.yaw), np.sin(cube.yaw)
    turned = square @ np.array([[cos, sin], [-sin, cos]]) + np.array(cube.centre)
    bottom = np.column_stack([turned, np.full(4, cube.bottom)])
    return np.concatenate([bottom, bottom + [0.0, 0.0, cube.side]])


# Faces as corner indices, counter-clockwise seen from outside (bottom face never visible).
_FACES = ((4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))


def _draw_table(dom: Domain, cam: _Camera, light: _Light, rng: np.random.Generator,
                size: tuple[int, int]) -> Image.Image:
    """The table plane (grain, vignette) and the wall beyond its far edge, as an RGB image of `size`.

    The table is smooth, so it is computed at 1/_SUPERSAMPLE resolution and scaled up.
    """
    width, height = size[0] // _SUPERSAMPLE, size[1] // _SUPERSAMPLE
    v, u = np.mgrid[0:height, 0:width].astype(np.float32) * _SUPERSAMPLE + (_SUPERSAMPLE - 1) / 2
    rays = _pixel_rays(cam, u, v)
    down = rays[..., 2] < -1e-6
    t = np.where(down, -cam.position[2] / np.minimum(rays[..., 2], -1e-6), 0.0)
    hit = cam.position[:2] + t[..., None] * rays[..., :2]
    on_table = down & ((hit - cam.target[:2]) @ cam.forward_flat < cam.wall)
    albedo = np.array(dom.table_rgb) * (1 + rng.uniform(-dom.table_jitter, dom.table_jitter, 3))
    shade = light.ambient + (1 - light.ambient) * light.direction[2]
    table = albedo * light.rgb * shade * _texture(hit, dom.grain, rng)[..., None]
    wall = np.array(dom.wall_rgb) * light.rgb * (0.8 + 0.2 * v / size[1])[..., None]
    pixels = np.where(on_table[..., None], table, wall)
    radius2 = ((u - size[0] / 2) ** 2 + (v - size[1] / 2) ** 2) / (size[0] / 2) ** 2
    pixels *= (1 - rng.uniform(*dom.vignette) * radius2 / 2)[..., None]
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return small.resize(size, Image.Resampling.BILINEAR)


def _pixel_rays(cam: _Camera, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World ray directions (H, W, 3), float32, through pixel positions (u, v)."""
    x, y = (u + 0.5 - cam.centre[0]) / cam.focal, (v + 0.5 - cam.centre[1]) / cam.focal
    cos, sin = np.cos(cam.roll), np.sin(cam.roll)
    xc, yc = cos * x + sin * y, -sin * x + cos * y
    right, up, forward = cam.axes.astype(np.float32)
    return xc[..., None] * right + (-yc)[..., None] * up + forward


def _texture(hit: np.ndarray, grain: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness factor (H, W) over table points `hit` (H, W, 2): faint blotches plus optional wood grain."""
    factor = np.ones(hit.shape[:2])
    coords = hit.astype(np.float32)
    for _ in range(3):
        k = rng.normal(0, 0.25, 2)
        factor += 0.02 * np.sin(coords @ k + rng.uniform(0, 2 * np.pi))
    if grain > 0:
        angle = rng.uniform(0, np.pi)
        along = coords @ np.array([np.cos(angle), np.sin(angle)])
        across = coords @ np.array([-np.sin(angle), np.cos(angle)])
        warp = 0.6 * np.sin(0.7 * along + rng.uniform(0, 6)) + 0.3 * np.sin(1.9 * along + rng.uniform(0, 6))
        factor += grain * 0.5 * np.sin(rng.uniform(5, 9) * (across + warp))
        factor += grain * 0.25 * np.sin(rng.uniform(17, 25) * (across + 0.5 * warp))
    return factor


def _draw_shadow(image: Image.Image, cubes: list[_Cube], cam: _Camera, light: _Light, blur: float) -> Image.Image:
    """Darken the table where the stack blocks the light (cast shadow plus a soft contact shadow)."""
    if not cubes:
        return image
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for cube in cubes:
        corners = _corners(cube)
        flat = corners - corners[:, 2:3] / light.direction[2] * light.direction
        draw.polygon(_hull(_project(cam, flat)), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(blur))
    contact = Image.new("L", image.size, 0)
    base = _corners(cubes[0])[:4]
    base[:, :2] = base[:, :2].mean(0) + 1.1 * (base[:, :2] - base[:, :2].mean(0))  # a little wider
    ImageDraw.Draw(contact).polygon(_hull(_project(cam, base)), fill=255)
    contact = contact.filter(ImageFilter.GaussianBlur(2 * blur))
    sun = (1 - light.ambient) * light.direction[2]
    direct = sun / (light.ambient + sun)  # the share of the table's light that the stack blocks
    dark = 0.85 * direct * np.asarray(mask, np.float64) / 255 + 0.25 * np.asarray(contact, np.float64) / 255
    pixels = np.asarray(image, np.float64) * (1 - np.clip(dark, 0, 0.9))[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _hull(points: np.ndarray) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of 2-D points, as a polygon for ImageDraw."""
    pts = sorted(map(tuple, points.tolist()))

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return half(pts) + half(pts[::-1])


def _draw_cubes(image: Image.Image, cubes: list[_Cube], cam: _Camera, light: _Light,
                rng: np.random.Generator) -> Image.Image:
    """Paint each cube's visible faces, bottom cube first (a lower cube never hides a higher one)."""
    draw = ImageDraw.Draw(image)
    for cube in cubes:
        corners = _corners(cube)
        pixels = _project(cam, corners)
        for face in _FACES:
            quad = corners[list(face)]
            normal = np.cross(quad[1] - quad[0], quad[3] - quad[0])
            normal /= np.linalg.norm(normal)
            if normal @ (cam.position - quad.mean(0)) <= 0:
                continue
            shade = light.ambient + (1 - light.ambient) * max(0.0, float(normal @ light.direction))
            rgb = np.array(cube.rgb) * light.rgb * shade * rng.uniform(0.96, 1.04)
            fill = tuple(int(c) for c in np.clip(rgb, 0, 255))
            draw.polygon([tuple(p) for p in pixels[list(face)]], fill=fill)
    return image


def _add_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, np.float64) + rng.normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
