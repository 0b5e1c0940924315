"""CLaRE: generated-face detection from frozen CLIP features, Stable Diffusion latent
reconstruction error (LaRE) and learnable text prompts.

The Python API (`clare.predictor`, docs in the README's "Python API"):

    import clare
    detector = clare.load("runs/demo")            # a run, an exported folder or owner/name
    predictions = detector.predict(["photo.png", pil_image, rgb_array, "clip.mp4"])

Names are imported on first use, so `import clare` (and `clare --help`) loads no torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    # One source of truth: the version pyproject.toml gave the installed package.
    __version__ = version("clare")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

# The public API: name -> the module that defines it.
_API = {
    "load": "clare.predictor",
    "Predictor": "clare.predictor",
    "PREDICTION_COLUMNS": "clare.predictor",
    "export_run": "clare.export",
    "ClareError": "clare.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'clare' has no attribute {name!r}")
