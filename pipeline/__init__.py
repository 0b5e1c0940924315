"""CLaRE: generated-face detection from frozen CLIP features, Stable Diffusion latent
reconstruction error (LaRE) and learnable text prompts."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source of truth: the version pyproject.toml gave the installed package.
    __version__ = version("clare")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
