import torch
from torchvision import transforms

from studyrunner.augment import augment_batch, color_jitter, normalize, random_crop, random_flip
from studyrunner.config import AugmentConfig


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
