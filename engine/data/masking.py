"""Background-mask ablation: suppress background pixels before encoding to measure background bias.

Masks act on the 8-bit RGB image (0..255), *before* the model's resize and normalisation, so that "0" means a
black pixel in every model's input space (after normalisation it becomes -mean/std, exactly what a black
region of a real photo gives). ``hard`` sets background to 0; ``soft`` multiplies it by σ, 0 < σ < 1.

Foreground comes from a PNG per image in ``--masks`` (same stem, any non-zero pixel = foreground; a mask of
another size is resized with nearest-neighbour and a warning), or — without ``--masks`` — from the built-in
estimate: a colour-contrast saliency map (frequency-tuned saliency, Achanta et al. CVPR 2009, in RGB) on a
64×64 grid, thresholded with Otsu's method and upsampled to pixels (nearest). It is model-independent on purpose: masked
indexes of different models are then masked identically and stay comparable. A saliency map with no contrast
(flat image) keeps every pixel as foreground, i.e. masking never blanks a whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import ConfigError, DataError

MASK_MODES = ("none", "hard", "soft")
MASK_SUFFIX = ".png"
SALIENCY_GRID = 64  # coarse grid: saliency of regions, not of single pixels or JPEG noise
SALIENCY_BLUR = 3  # box filter width (grid cells) applied to the colours before the contrast
OTSU_BINS = 256
MISSING_LISTED = 5


@dataclass(frozen=True)
class MaskOptions:
    """Background masking applied before encoding; ``masks_dir`` None means the built-in foreground estimate."""

    mode: str = "none"
    sigma: float | None = None
    masks_dir: str | None = None

    @property
    def source(self) -> str:
        if self.mode == "none":
            return "none"
        return "mask-files" if self.masks_dir else "builtin-colour-contrast"

    def describe(self) -> dict[str, str]:
        return {"mask_mode": self.mode, "mask_sigma": "" if self.sigma is None else repr(self.sigma),
                "mask_source": self.source}


def mask_options(mode: str, sigma: float | None, masks_dir: Path | None) -> MaskOptions:
    """Validate the ``--mask/--sigma/--masks`` flags into one record (sigma only matters for ``soft``)."""
    if mode not in MASK_MODES:
        raise ConfigError(f"--mask: expected one of {', '.join(MASK_MODES)}, got {mode!r}")
    if mode == "none":
        if masks_dir is not None:
            raise ConfigError("--masks given with --mask none; choose --mask hard or --mask soft to use it")
        return MaskOptions()
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise ConfigError(f"--masks {masks_dir}: folder not found")
    if mode == "soft" and sigma is None:
        raise ConfigError("--mask soft needs --sigma, the background factor (0 < sigma < 1)")
    if sigma is not None and not 0.0 < sigma < 1.0:
        raise ConfigError(f"--sigma must be strictly between 0 and 1, got {sigma}")
    resolved_sigma = float(sigma) if mode == "soft" and sigma is not None else None
    return MaskOptions(mode=mode, sigma=resolved_sigma,
                       masks_dir=str(Path(masks_dir).resolve()) if masks_dir is not None else None)


def mask_path_for(masks_dir: Path, image_path: Path) -> Path:
    return masks_dir / f"{image_path.stem}{MASK_SUFFIX}"


def check_masks_present(masks_dir: Path, image_paths: list[Path]) -> None:
    """Fail before encoding when masks are missing, listing the first few expected files and the count."""
    missing = [mask_path_for(masks_dir, path).name for path in image_paths
               if not mask_path_for(masks_dir, path).is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_LISTED])
        more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
        raise DataError(f"--masks {masks_dir}: {len(missing)} of {len(image_paths)} masks missing: {shown}{more}")


def load_mask(path: Path, width: int, height: int) -> tuple[np.ndarray, bool]:
    """Foreground boolean (H, W) for an image of ``width``×``height``; True in [1] when it had to be resized."""
    from engine.data.image_guard import open_image

    try:
        with open_image(Path(path)) as image:
            grey = image.convert("L")
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: unreadable mask ({error})") from None
    resized = grey.size != (width, height)
    if resized:
        grey = grey.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(grey) != 0, resized


def apply_mask(rgb: np.ndarray, foreground: np.ndarray, options: MaskOptions) -> np.ndarray:
    """Hard: background → 0; soft: background × σ (rounded). ``rgb`` is (H, W, 3) uint8, returns uint8."""
    if options.mode == "none":
        return rgb
    if foreground.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {foreground.shape} does not match image shape {rgb.shape[:2]}")
    background = ~foreground
    out = rgb.copy()
    if options.mode == "hard":
        out[background] = 0
    else:
        scaled = np.rint(rgb[background].astype(np.float32) * float(options.sigma))
        out[background] = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def _box_blur(array: np.ndarray, width: int) -> np.ndarray:
    """Separable mean filter with edge padding (keeps numpy the only dependency)."""
    pad = width // 2
    padded = np.pad(array, pad, mode="edge")
    kernel = np.ones(width) / width
    rows = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), 0, rows)


def colour_contrast_saliency(rgb: np.ndarray, grid: int = SALIENCY_GRID) -> np.ndarray:
    """Saliency (grid, grid) in [0, 1]: distance of each (smoothed) pixel colour from the image's mean colour.

    The frequency-tuned saliency of Achanta et al. (CVPR 2009), computed in RGB on a coarse grid: whatever
    differs in colour from the dominant ground cover (buildings on fields, ships on water) scores high, and
    whole objects score high, not only their edges.
    """
    small = np.asarray(Image.fromarray(rgb).resize((grid, grid), Image.Resampling.BILINEAR), dtype=np.float64)
    smoothed = np.stack([_box_blur(small[..., band], SALIENCY_BLUR) for band in range(small.shape[2])], axis=-1)
    saliency = np.linalg.norm(smoothed - small.reshape(-1, small.shape[2]).mean(axis=0), axis=-1)
    low, high = float(saliency.min()), float(saliency.max())
    return np.zeros_like(saliency) if high - low <= 0 else (saliency - low) / (high - low)


def otsu_threshold(values: np.ndarray) -> float | None:
    """Otsu's between-class-variance threshold; None when the values have no spread (nothing to separate)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return None
    counts, edges = np.histogram(values, bins=OTSU_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def foreground_from_saliency(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """Threshold a (h, w) saliency/token grid at Otsu and upsample (nearest) to a (height, width) mask."""
    threshold = otsu_threshold(saliency)
    if threshold is None:
        return np.ones((height, width), dtype=bool)
    grid = saliency >= threshold
    rows = np.minimum((np.arange(height) * grid.shape[0]) // height, grid.shape[0] - 1)
    cols = np.minimum((np.arange(width) * grid.shape[1]) // width, grid.shape[1] - 1)
    return grid[np.ix_(rows, cols)]


def estimate_foreground(rgb: np.ndarray) -> np.ndarray:
    """The built-in foreground estimate used when no ``--masks`` folder is given (see module docstring)."""
    height, width = rgb.shape[:2]
    return foreground_from_saliency(colour_contrast_saliency(rgb), width, height)
