import torch
from torchvision import transforms

from studyrunner.config import AugmentConfig
from studyrunner.engine.augment import augment_batch, color_jitter, normalize, random_crop, random_flip


def _batch(n=32, size=8):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_crop_without_padding_is_identity():
    x = _batch()
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)


def test_crop_is_a_window_of_the_zero_padded_image():
    x, pad = _batch(), 2
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], out[i])
        ]
        assert hits, f"image {i} is not a padded window"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets differ between images


def test_flip_flips_about_half_exactly():
    x = _batch(64)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=False))
    assert 16 < sum(flipped) < 48


def test_color_jitter_stays_in_range_and_changes_images():
    x = _batch().float() / 255
    cfg = AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)
    out = color_jitter(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 0.02
    assert torch.allclose(color_jitter(x, AugmentConfig(), torch.Generator()), x)


def test_hue_rotation_keeps_gray_pixels_gray():
    gray = torch.full((4, 3, 4, 4), 0.4)
    out = color_jitter(gray, AugmentConfig(hue=0.5), torch.Generator().manual_seed(0))
    assert torch.allclose(out, gray, atol=1e-5)


def test_normalize_matches_torchvision():
    x = _batch()
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    ref = transforms.Normalize(mean.tolist(), std.tolist())(x.float() / 255)
    assert torch.allclose(normalize(x, mean, std), ref, atol=1e-5)


def test_augment_batch_output_is_normalised_float_of_same_shape():
    x = _batch()
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    cfg = AugmentConfig(crop_padding=4, flip=True, brightness=0.5, contrast=0.5, hue=0.5)
    out = augment_batch(x, cfg, mean, std, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= -2.0 - 1e-5 and out.max() <= 2.0 + 1e-5


def test_random_resized_crop_keeps_the_shape_and_covers_the_scale_range():
    from studyrunner.engine.augment import RATIO, random_resized_crop

    n, size = 256, 64
    ramp = torch.arange(size, dtype=torch.float32) * 4  # 0..252: a pixel's value says where it came from
    x = torch.zeros(n, 3, size, size)
    x[:, 0] = ramp[None, None, :]  # channel 0 encodes the column, channel 1 the row
    x[:, 1] = ramp[None, :, None]
    gen = torch.Generator().manual_seed(0)
    for low, high in ((0.08, 1.0), (0.25, 0.5)):
        out = random_resized_crop(x.to(torch.uint8), (low, high), gen)
        assert out.shape == (n, 3, size, size) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
        width = (out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))) * 255 / 252  # shares of the image covered
        height = (out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))) * 255 / 252
        area, ratio = width * height, width / height
        assert area.min() > low * 0.8 and area.max() < min(1.0, high * 1.1)  # a pixel of slack for the bilinear edges
        assert ratio.min() > RATIO[0] * 0.85 and ratio.max() < RATIO[1] * 1.15
        assert area.std() > 0.05  # the crops differ from image to image
