"""Image loading (every format/mode comes out upright 8-bit RGB) and preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.errors import ImageError, InputError
from reportgen.model.images import (
    IMAGENET_MEAN,
    image_folder,
    list_images,
    load_image,
    preprocess,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def solid(size=(8, 8), colour=RED, mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def close(pixel, expected, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def saved(tmp_path, img: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize("name, kwargs", [
    ("a.png", {}), ("a.jpg", {"quality": 95}), ("a.webp", {"lossless": True}),
    ("a.bmp", {}), ("a.gif", {}), ("a.tiff", {}),
])
def test_common_formats(tmp_path, name, kwargs):
    img = load_image(saved(tmp_path, solid(), name, **kwargs))
    assert img.mode == "RGB" and img.size == (8, 8)
    assert close(img.getpixel((4, 4)), RED)


def test_cmyk_jpeg(tmp_path):
    path = saved(tmp_path, solid(colour=(0, 255, 255, 0), mode="CMYK"), "c.jpg", quality=95)
    img = load_image(path)
    assert img.mode == "RGB" and close(img.getpixel((4, 4)), RED)


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (32, 16), BLUE)
    stored.paste(RED, (0, 0, 16, 16))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = load_image(saved(tmp_path, stored, "phone.jpg", exif=exif, quality=95))
    assert img.size == (16, 32)
    assert close(img.getpixel((8, 4)), RED) and close(img.getpixel((8, 28)), BLUE)


def test_greyscale_and_bilevel(tmp_path):
    grey = load_image(saved(tmp_path, solid(colour=100, mode="L"), "g.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (100, 100, 100)
    bilevel = load_image(saved(tmp_path, solid(colour=1, mode="1"), "b.png"))
    assert bilevel.getpixel((0, 0)) == WHITE


def test_rgba_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    out = load_image(saved(tmp_path, img, "t.png"))
    assert out.getpixel((0, 0)) == WHITE  # fully transparent black -> white, not black
    assert close(out.getpixel((1, 0)), (255, 127, 127), tol=2)


def test_la_is_composited(tmp_path):
    out = load_image(saved(tmp_path, solid(colour=(0, 0), mode="LA"), "la.png"))
    assert out.getpixel((0, 0)) == WHITE


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    out = load_image(saved(tmp_path, img, "p.png", transparency=0))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == RED


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    out = np.asarray(load_image(saved(tmp_path, Image.fromarray(arr), "d.png")))
    assert out[0, :, 0].tolist() == [0, 128, 255, 1]
    assert (out[..., 0] == out[..., 2]).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [solid(colour=RED), solid(colour=BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert close(load_image(path).getpixel((0, 0)), RED)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    path = saved(tmp_path, Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                 "cut.png")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_image(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb(tmp_path, monkeypatch):
    path = saved(tmp_path, solid(size=(64, 64)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


# --------------------------------------------------------------------------- preprocess

def gradient(w=40, h=20) -> Image.Image:
    x = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1))
    return Image.fromarray(np.stack([x, 255 - x, np.full_like(x, 64)], -1).astype(np.uint8))


def test_preprocess_rgb_shapes_and_normalization():
    img = solid(size=(10, 10), colour=(255, 0, 128))
    x, display = preprocess(img, (3, 10, 10))
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert display.shape == (10, 10, 3) and display.dtype == np.uint8
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert x[:, 5, 5].tolist() == pytest.approx(expected, abs=1e-5)


def test_preprocess_greyscale_model():
    img = solid(size=(6, 6), colour=(255, 255, 255))
    x, display = preprocess(img, (1, 4, 4), mean=[0.5], std=[0.25])
    assert x.shape == (1, 4, 4) and display.shape == (4, 4, 3)
    assert x.flatten().tolist() == pytest.approx([2.0] * 16)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"mean": IMAGENET_MEAN, "std": [0.5]}, "mean has 3 values"),
    ({}, "must be given"),
])
def test_preprocess_mean_length_must_match_channels(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        preprocess(solid(), (1, 8, 8), **kwargs)


def test_preprocess_resize_then_crop_matches_torchvision():
    from torchvision.transforms import v2

    img = gradient(40, 20)
    pipeline = v2.Compose([v2.Resize(12), v2.CenterCrop(10), v2.PILToTensor()])
    want = pipeline(img).permute(1, 2, 0).numpy()
    _, display = preprocess(img, (3, 10, 10), resize=12, center_crop=10)
    assert display.shape == (10, 10, 3)
    assert np.array_equal(display, want)


def test_preprocess_crop_larger_than_image_pads_like_torchvision():
    from torchvision.transforms import v2

    img = gradient(5, 7)
    want = v2.Compose([v2.CenterCrop([9, 8]), v2.PILToTensor()])(img).permute(1, 2, 0).numpy()
    _, display = preprocess(img, (3, 9, 8), center_crop=[9, 8])
    assert np.array_equal(display, want)


def test_preprocess_resizes_to_input_size_when_crop_differs():
    x, display = preprocess(gradient(40, 20), (3, 8, 16), resize=10, center_crop=10)
    assert x.shape == (3, 8, 16) and display.shape == (8, 16, 3)


def test_preprocess_is_deterministic():
    a, _ = preprocess(gradient(), (3, 16, 16), resize=18, center_crop=16)
    b, _ = preprocess(gradient(), (3, 16, 16), resize=18, center_crop=16)
    assert torch.equal(a, b)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_preprocess_interpolation_matches_torchvision(interpolation):
    from torchvision import transforms as T

    img = gradient(40, 30)
    mode = T.InterpolationMode(interpolation)
    expected = T.Compose([T.Resize(18, interpolation=mode), T.CenterCrop(16)])(img)
    _, display = preprocess(img, (3, 16, 16), resize=18, center_crop=16, interpolation=interpolation)
    assert np.array_equal(display, np.asarray(expected))


def test_preprocess_interpolation_default_and_unknown():
    img = gradient(40, 30)
    default, _ = preprocess(img, (3, 12, 12), resize=17)
    bilinear, _ = preprocess(img, (3, 12, 12), resize=17, interpolation="bilinear")
    bicubic, _ = preprocess(img, (3, 12, 12), resize=17, interpolation="bicubic")
    assert torch.equal(default, bilinear) and not torch.equal(bilinear, bicubic)
    with pytest.raises(ValueError, match="bicubic"):
        preprocess(img, (3, 12, 12), interpolation="cubic")


# --------------------------------------------------------------------------- listing

def make_files(root, names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_list_images_natural_order_and_dedup(tmp_path):
    make_files(tmp_path, ["p/img10.png", "p/img2.png", "p/img1.jpg", "p/notes.txt", "cat.JPG"])
    got = list_images(["p/*", "cat.JPG", "p/img2.png"], tmp_path)
    assert [p.name for p in got] == ["img1.jpg", "img2.png", "img10.png", "cat.JPG"]


def test_list_images_errors_name_the_pattern(tmp_path):
    with pytest.raises(InputError, match="nothing_"):
        list_images(["nothing_*.png"], tmp_path)
    with pytest.raises(InputError, match="gone.png"):
        list_images("gone.png", tmp_path)


def test_image_folder_layout_and_deterministic_limit(tmp_path):
    names = [f"{cls}/{i}.png" for cls in ("dog", "cat") for i in range(10)]
    make_files(tmp_path / "val", names + [".hidden/x.png", "bird/readme.txt"])
    items = image_folder("val", base_dir=tmp_path)
    assert len(items) == 20 and items[0][1] == "cat" and items[-1][1] == "dog"
    assert [p.name for p, _ in items[:3]] == ["0.png", "1.png", "2.png"]
    picked = image_folder("val", limit=6, seed=0, base_dir=tmp_path)
    assert picked == image_folder(str(tmp_path / "val"), limit=6, seed=0)
    assert [c for _, c in picked].count("cat") == 3
    other = image_folder("val", limit=6, seed=1, base_dir=tmp_path)
    assert picked != other


def test_image_folder_glob(tmp_path):
    make_files(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    items = image_folder("*/*.png", limit=2, base_dir=tmp_path)
    assert len(items) == 2 and all(c is None for _, c in items)
