"""Reading user images into RGB and preprocessing them like torchvision does.

Users point reportgen at whatever they have: phone JPEGs with EXIF rotation,
CMYK JPEGs from print pipelines, transparent PNGs, 16-bit medical PNGs, GIFs.
Every one of those has a way to silently go wrong with a naive
``Image.open(p).convert("RGB")`` (sideways, inverted, black background,
clipped to white), which would make the explanations in the report describe
an image the user never saw. All of that is handled once, here.
"""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reportgen.errors import ImageError, InputError
from reportgen.paths import glob_files, is_glob, natural_key, user_path

if TYPE_CHECKING:  # torch is imported lazily: listing and loading images do not need it
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_image",
    "preprocess",
    "list_images",
    "image_folder",
]

# torchvision's ImageFolder extensions, plus GIF.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                    ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHITE = (255, 255, 255)

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, Sequence[int]]

# preprocess.interpolation: torchvision's names for the PIL filters its Resize uses on PIL images.
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


# --------------------------------------------------------------------------- loading

def load_image(path: PathLike) -> Image.Image:
    """Any common image file as an upright, 8-bit RGB image; ImageError naming it otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ImageError("image file not found" if not p.exists() else "not a file", p)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat both as fatal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(p) as img:
                img.seek(0)  # first frame of GIF/WebP animations
                img.load()
                return _to_rgb(_upright(img), img.format)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(
                f"refusing to decode a suspiciously large image ({e}). This guards against "
                "decompression bombs; downscale the image first.", p) from None
        except UnidentifiedImageError:
            raise ImageError("not an image Pillow can read (wrong extension or "
                             "corrupt file?)", p) from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
            raise ImageError(f"cannot decode the image (truncated or corrupt?): {e}", p) from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation: phones store portraits sideways plus a rotation tag."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good image unreadable
        return img


def _to_rgb(img: Image.Image, fmt: Optional[str]) -> Image.Image:
    """8-bit RGB, whatever the mode; transparency becomes white (how viewers show it).

    ``fmt`` is the file format, passed separately because transposed copies lose it.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_bit_depth_to_uint8(img, fmt)).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if "A" in mode or mode == "PA" or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _high_bit_depth_to_uint8(img: Image.Image, fmt: Optional[str]) -> np.ndarray:
    """Scale 16-bit (or 32-bit int/float) greyscale to 0..255 instead of clipping.

    Pillow's own ``convert("L")`` clips everything above 255 to white. PNGs
    with mode "I" are always 16-bit sources; for other formats the value range
    decides the bit depth.
    """
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64))
        peak = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(np.rint(a / peak * 255.0), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    if img.mode.startswith("I;16") or fmt == "PNG":
        peak = 65535
    else:
        top = int(a.max(initial=0))
        peak = 255 if top <= 255 else 65535 if top <= 65535 else top
    return np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one; Pillow's formula otherwise."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a bad profile still leaves a usable image
            pass
    return img.convert("RGB")


# --------------------------------------------------------------------------- preprocessing

def preprocess(img: Image.Image, input_size: Sequence[int], resize: Optional[int] = None,
               center_crop: Optional[Size] = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, interpolation: str = "bilinear"
               ) -> Tuple["torch.Tensor", np.ndarray]:
    """The model's input tensor (C, H, W) and the same crop as RGB uint8 (H, W, 3) to show.

    Mirrors torchvision's ``Resize(resize)`` -> ``CenterCrop(center_crop)`` ->
    ``ToTensor`` -> ``Normalize(mean, std)`` on PIL images, so explanations are
    computed on what the model saw in training. If the result is not exactly
    ``input_size``'s (H, W) (no crop given, or a crop of another size), it is
    then resized to (H, W): the model's declared input size wins. Both resizes
    use ``interpolation`` (a key of INTERPOLATIONS, as torchvision names it).
    ``mean``/``std`` default to ImageNet's for 3 channels; any other channel
    count must give them explicitly. Lengths must equal C (ValueError).
    """
    import torch

    c, h, w = _input_size(input_size)
    mean_t, std_t = _normalization(c, mean, std)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    img = img.convert("RGB")
    if resize is not None:
        img = resize_shorter(img, int(resize), interpolation)
    if center_crop is not None:
        img = center_crop_image(img, _pair(center_crop))
    if img.size != (w, h):
        img = img.resize((w, h), INTERPOLATIONS[interpolation])
    display = np.asarray(img, dtype=np.uint8).copy()
    pixels = np.asarray(img.convert("L"))[None] if c == 1 else display.transpose(2, 0, 1)
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    x = (x - torch.tensor(mean_t).view(-1, 1, 1)) / torch.tensor(std_t).view(-1, 1, 1)
    return x.contiguous(), display


def _input_size(input_size: Sequence[int]) -> Tuple[int, int, int]:
    if len(input_size) != 3:
        raise ValueError(f"input_size must be [C, H, W], got {list(input_size)}")
    c, h, w = (int(v) for v in input_size)
    if c not in (1, 3):
        raise ValueError(f"input_size has {c} channels; images can feed 1 (greyscale) "
                         "or 3 (RGB) channel models")
    if h <= 0 or w <= 0:
        raise ValueError(f"input_size must have positive H and W, got {list(input_size)}")
    return c, h, w


def _normalization(c: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
                   ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Validate mean/std against the channel count rather than guess (e.g. averaging)."""
    if mean is None or std is None:
        if c != 3:
            raise ValueError(f"preprocess.mean and preprocess.std must be given for a {c}-channel "
                             f"model (the defaults are ImageNet's 3-channel values)")
        mean = IMAGENET_MEAN if mean is None else mean
        std = IMAGENET_STD if std is None else std
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    for name, values in (("mean", mean_t), ("std", std_t)):
        if len(values) != c:
            raise ValueError(f"preprocess.{name} has {len(values)} values but the model takes "
                             f"{c} channel(s) (model.input_size); give {c}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"preprocess.std values must be positive, got {list(std_t)}")
    return mean_t, std_t


def _pair(size: Size) -> Tuple[int, int]:
    """An int or [h, w] as (h, w), like torchvision's size arguments."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    values = [int(v) for v in size]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise ValueError(f"a crop size is an int or [h, w], got {list(size)}")
    return values[0], values[1]


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """torchvision ``Resize(int)``: shorter side to ``size``, aspect kept, long side truncated."""
    w, h = img.size
    if size <= 0:
        raise ValueError(f"preprocess.resize must be positive, got {size}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), INTERPOLATIONS[interpolation])


def center_crop_image(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """torchvision ``CenterCrop``: same rounding, zero padding when the crop is larger."""
    ch, cw = size
    w, h = img.size
    left = -((cw - w) // 2) if cw > w else int(round((w - cw) / 2.0))
    top = -((ch - h) // 2) if ch > h else int(round((h - ch) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


# --------------------------------------------------------------------------- listing

def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(patterns: Union[PathLike, Sequence[PathLike]], base_dir: PathLike) -> List[Path]:
    """Image paths for globs, files and folders (relative to ``base_dir``), in a stable order.

    Each pattern's matches are naturally sorted and kept in pattern order, so
    the report shows probes in the order the user listed them. Globs and
    folders keep only IMAGE_EXTENSIONS; an explicitly named file is kept as is
    (load_image then says precisely what is wrong with it).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out: List[Path] = []
    seen = set()
    for pattern in patterns:
        for p in _expand_image_pattern(str(pattern), Path(base_dir)):
            key = os.path.normcase(os.path.abspath(p))
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def _expand_image_pattern(pattern: str, base: Path) -> List[Path]:
    full = user_path(pattern, base)
    resolved = os.path.abspath(full)
    if is_glob(pattern):
        hits = [p for p in glob_files(full) if _is_image_name(p)]
        if not hits:
            raise InputError("no image file matches this glob "
                             f"(extensions: {' '.join(IMAGE_EXTENSIONS)})", pattern, resolved)
        return hits
    if full.is_dir():
        hits = [p for p in full.rglob("*") if p.is_file() and _is_image_name(p)]
        if not hits:
            raise InputError("the folder holds no image files", pattern, resolved)
        return sorted(hits, key=natural_key)
    if not full.exists():
        raise InputError("image file not found", pattern, resolved)
    return [full]


def image_folder(root: PathLike, limit: Optional[int] = None, seed: int = 0,
                 base_dir: Optional[PathLike] = None) -> List[Tuple[Path, Optional[str]]]:
    """``(path, class_name)`` pairs for a dataset folder or glob, at most ``limit`` of them.

    A folder uses torchvision's ImageFolder layout: class names are the
    sub-folders in plain sorted order (so they line up with ImageFolder's class
    indices); hidden folders are skipped. Loose images in the root, and glob
    matches, have class None. See ``select_deterministic`` for how ``limit``
    picks images.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    full = user_path(root, base)
    if is_glob(root) or not full.is_dir():
        if not is_glob(root) and not full.exists():
            raise InputError("dataset folder not found", root, os.path.abspath(full))
        items: List[Tuple[Path, Optional[str]]] = [
            (p, None) for p in list_images([str(root)], base)]
    else:
        items = _folder_items(full)
        if not items:
            raise InputError("the dataset folder holds no images (expected class sub-folders "
                             f"with {' '.join(IMAGE_EXTENSIONS)} files)", root, os.path.abspath(full))
    return select_deterministic(items, limit, seed, full if full.is_dir() else base)


def _folder_items(root: Path) -> List[Tuple[Path, Optional[str]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items: List[Tuple[Path, Optional[str]]] = [
        (p, None) for p in sorted(root.iterdir(), key=natural_key)
        if p.is_file() and _is_image_name(p)]
    for name in classes:
        files = [p for p in (root / name).rglob("*")
                 if p.is_file() and _is_image_name(p)
                 and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]
        items.extend((p, name) for p in sorted(files, key=natural_key))
    return items


def select_deterministic(items: Sequence[Tuple[Path, Optional[str]]], limit: Optional[int],
                         seed: int, root: Path) -> List[Tuple[Path, Optional[str]]]:
    """At most ``limit`` items, the same on every run and platform for one seed.

    Each class gets a share proportional to its size (so a subsample keeps the
    class balance), and within a class the images with the smallest
    ``sha256(seed, relative path)`` win. Hashing relative paths (not RNG
    streams) keeps the pick independent of numpy/Python versions and of where
    the dataset lives, and adding one image changes the pick by at most one.
    Returned in the original (class, natural) order.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    groups: Dict[Optional[str], List[int]] = {}
    for i, (_, cls) in enumerate(items):
        groups.setdefault(cls, []).append(i)
    quotas = _proportional_quotas([len(g) for g in groups.values()], limit)
    chosen: List[int] = []
    for indices, quota in zip(groups.values(), quotas):
        ranked = sorted(indices, key=lambda i: _rank(items[i][0], root, seed))
        chosen.extend(ranked[:quota])
    return [items[i] for i in sorted(chosen)]


def _proportional_quotas(sizes: Sequence[int], limit: int) -> List[int]:
    """Largest-remainder split of ``limit`` over groups; ties go to the earlier group."""
    total = sum(sizes)
    exact = [s * limit / total for s in sizes]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: limit - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _rank(path: Path, root: Path, seed: int) -> Tuple[str, str]:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return hashlib.sha256(f"{seed}:{rel}".encode("utf-8")).hexdigest(), rel


def shrink_to(display: np.ndarray, side: int) -> np.ndarray:
    """An RGB uint8 picture whose longer side is at most ``side`` (bilinear, aspect kept, never
    enlarged): what a section keeps of an image it shows small, so memory stays flat in dataset size."""
    img = np.asarray(display, dtype=np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    scale = side / max(h, w)
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.BILINEAR))
