"""Per-frame image fidelity metrics (PSNR, SSIM) in numpy, for reconstructions and regression checks.

Both take arrays shaped (..., H, W, C) and return one value per leading index (per frame for a video
(T, H, W, C), per frame per video for (N, T, H, W, C)); average them yourself.
"""

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: the 11x11 Gaussian window of Wang et al. (2004)
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(f"need two arrays of the same shape (..., H, W, C), got {x.shape} and {y.shape}")
    return x, y


def psnr(x, y, *, data_range=255.0):
    """Peak signal-to-noise ratio in dB over each (H, W, C) image; identical images give inf."""
    x, y = _pair(x, y)
    mse = np.mean((x - y) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def ssim(x, y, *, data_range=255.0):
    """Structural similarity (Gaussian 11x11 window, sigma 1.5, K1=0.01, K2=0.03) per image, channel mean.

    Border pixels whose window leaves the image are left out of the mean, as in scikit-image.
    """
    x, y = _pair(x, y)
    sigma = [0.0] * (x.ndim - 3) + [SSIM_SIGMA, SSIM_SIGMA, 0.0]

    def blur(image):
        return ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov_xy = blur(x * y) - mean_x * mean_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    height, width = x.shape[-3:-1]
    if height <= 2 * radius or width <= 2 * radius:
        raise ValueError(f"images must be larger than {2 * radius} px for SSIM, got {height}x{width}")
    return ssim_map[..., radius:-radius, radius:-radius, :].mean(axis=(-3, -2, -1))
