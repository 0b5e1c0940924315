"""CLaRE: generated-face detection from frozen CLIP features, Stable Diffusion latent
reconstruction error (LaRE) and learnable text prompts."""

__version__ = "0.1.0"
