"""ImageNet-C corruptions: parity with the reference formulas, seeding, and the known answer
of a model whose classes differ only in 2-px gratings."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.analyses import corruptions as cr


def _image(side: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((side, side, 3))


def _batch(img: np.ndarray) -> torch.Tensor:
    return torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None]


def _back(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("severity", cr.SEVERITIES)
def test_gaussian_blur_and_brightness_match_the_reference_code_at_224(severity):
    """imagecorruptions' own lines, run with scikit-image (what they call)."""
    skf = pytest.importorskip("skimage.filters")
    skc = pytest.importorskip("skimage.color")
    img = _image()
    ref = skf.gaussian(img, sigma=cr.PARAMS["gaussian_blur"][severity - 1], channel_axis=-1)
    assert np.abs(_back(cr.corrupt(_batch(img), "gaussian_blur", severity)) - ref).max() < 1e-9
    hsv = skc.rgb2hsv(img)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + cr.PARAMS["brightness"][severity - 1], 0, 1)
    ref = np.clip(skc.hsv2rgb(hsv), 0, 1)
    assert np.abs(_back(cr.corrupt(_batch(img), "brightness", severity)) - ref).max() < 1e-9


@pytest.mark.parametrize("severity", cr.SEVERITIES)
def test_contrast_pixelate_jpeg_match_the_reference_code(severity):
    img = _image(seed=1)
    c = cr.PARAMS["contrast"][severity - 1]
    means = img.mean(axis=(0, 1), keepdims=True)
    ref = np.clip((img - means) * c + means, 0, 1)
    assert np.abs(_back(cr.corrupt(_batch(img), "contrast", severity)) - ref).max() < 1e-9
    pil = Image.fromarray((img * 255).round().astype(np.uint8))
    c = cr.PARAMS["pixelate"][severity - 1]
    ref = np.asarray(pil.resize((int(224 * c), int(224 * c)), Image.BOX).resize((224, 224), Image.BOX)) / 255.0
    assert np.abs(_back(cr.corrupt(_batch(img), "pixelate", severity)) - ref).max() < 1e-6
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=cr.PARAMS["jpeg"][severity - 1])
    ref = np.asarray(Image.open(buf)) / 255.0
    assert np.abs(_back(cr.corrupt(_batch(img), "jpeg", severity)) - ref).max() < 1e-6


def test_imagecorruptions_package_parity():
    pytest.importorskip("imagecorruptions", reason="imagecorruptions needs OpenCV (opencv-python), which "
                        "reportgen does not install; the reference formulas are checked above instead")


def test_defocus_kernel_is_imagenet_c_disk():
    k = cr.disk_kernel(3, 0.1)
    assert k.shape == (17, 17) and float(k.sum()) == pytest.approx(1.0)
    assert float(k[8, 8 + 4]) < 1e-6 < float(k[8, 8 + 3])     # radius 3, barely anti-aliased
    assert cr.disk_kernel(10, 0.5).shape == (21, 21)            # radius over 8: the kernel grows


def test_blur_radii_scale_with_the_input_side():
    """A 112-px image blurred like the same image at 224 px, then halved."""
    big = np.kron(_image(112, seed=2), np.ones((2, 2, 1)))     # each pixel doubled: a 224 px image
    small = big[::2, ::2]
    for name in ("gaussian_blur", "defocus_blur"):
        a = _back(cr.corrupt(_batch(big), name, 3))
        b = _back(cr.corrupt(_batch(small), name, 3))
        assert np.abs(a.reshape(112, 2, 112, 2, 3).mean(axis=(1, 3)) - b).mean() < 0.02, name


def test_noise_is_seeded_per_image_whatever_the_batch():
    x = torch.rand(4, 3, 16, 16)
    for name in cr.NOISY:
        whole = cr.corrupt(x, name, 3, [10, 11, 12, 13])
        part = cr.corrupt(x[2:], name, 3, [12, 13])
        assert torch.equal(whole[2:], part)
        assert not torch.equal(cr.corrupt(x, name, 3, [1, 2, 3, 4]), whole)


def test_noise_levels():
    grey = torch.full((1, 3, 224, 224), 0.5)
    for s in cr.SEVERITIES:
        if s <= 3:   # sigma <= 0.18 around 0.5: clipping at [0, 1] is negligible
            std = float((cr.corrupt(grey, "gaussian_noise", s, [0]) - grey).std())
            assert std == pytest.approx(cr.PARAMS["gaussian_noise"][s - 1], rel=0.02)
            assert float(cr.corrupt(grey, "shot_noise", s, [0]).mean()) == pytest.approx(0.5, abs=0.01)


def test_every_corruption_keeps_shape_and_range():
    x = torch.rand(2, 3, 20, 24)
    for name in cr.CORRUPTIONS:
        for s in cr.SEVERITIES:
            y = cr.corrupt(x, name, s, [0, 1])
            assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1, (name, s)
    with pytest.raises(ValueError, match="valid"):
        cr.corrupt(x, "fog", 1)
