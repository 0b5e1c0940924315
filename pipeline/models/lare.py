"""Latent reconstruction error (LaRE) of a frozen Stable Diffusion model (docs/design.md §2.1).

For an image x in [-1, 1] at 256 px:
    z   = vae.encode(x).latent_dist.sample() * scaling_factor          (one draw)
    z_t = scheduler.add_noise(z, eps_k, t)      for k = 1..ensemble, fresh eps_k, same t
    LaRE = mean_k (unet(z_t, t, cond) - target_k)^2                   element-wise, float32
where target is eps (epsilon models) or the velocity (v-prediction models), and cond is the
text encoder's last hidden state for a fixed, label-free prompt, computed once.

All randomness of an image comes from its own torch.Generator (seeded from the global seed and
the image's content hash by the caller): first the VAE draw, then the ensemble noise. Both are
drawn on the CPU, so a map is the same on any device, batch composition or order.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clare.config import LareConfig
from clare.models.loading import StableDiffusionParts
from clare.models.precision import autocast_context


def lare_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """PIL RGB -> (3, size, size) float32 in [-1, 1]; BICUBIC with antialiasing, no crop."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


def encode_prompt(parts: StableDiffusionParts, prompt: str, device: torch.device) -> torch.Tensor:
    """(1, 77, D) last hidden state of SD's text encoder for a prompt padded to max length."""
    tokens = parts.tokenizer(
        prompt,
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return parts.text_encoder(tokens.input_ids.to(device))[0].float()


class LareExtractor:
    """Batched LaRE: the ensemble copies of every image in a batch run in one UNet call."""

    def __init__(
        self,
        parts: StableDiffusionParts,
        cfg: LareConfig,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
        compile_unet: bool = False,
    ) -> None:
        self.parts = parts
        self.cfg = cfg
        self.device = device
        self.precision = precision
        parts.vae.to(device)
        parts.unet.to(device)
        parts.text_encoder.to(device)
        if channels_last:
            parts.unet.to(memory_format=torch.channels_last)
            parts.vae.to(memory_format=torch.channels_last)
        self.unet = torch.compile(parts.unet) if compile_unet else parts.unet
        self.condition = encode_prompt(parts, cfg.prompt, device)
        # The text encoder is not needed again: free its memory on the device.
        parts.text_encoder.to("cpu")
        self.scaling = float(parts.vae.config.scaling_factor)
        self.prediction_type = parts.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported scheduler prediction_type {self.prediction_type!r}")

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """pixels (B, 3, S, S) in [-1, 1]; one CPU generator per image -> (B, 4, h, w) float32."""
        batch, ensemble = pixels.shape[0], self.cfg.ensemble
        pixels = pixels.to(self.device)
        with autocast_context(self.device, self.precision):
            posterior = self.parts.vae.encode(pixels).latent_dist
        shape = tuple(posterior.mean.shape[1:])
        # Per-image draws on the CPU: VAE sample first, then the ensemble noise.
        vae_noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        noise = torch.stack([torch.randn((ensemble, *shape), generator=g) for g in generators])
        latents = posterior.mean.float() + posterior.std.float() * vae_noise.to(self.device)
        latents = latents * self.scaling
        latents = latents.repeat_interleave(ensemble, dim=0)
        noise = noise.reshape(batch * ensemble, *shape).to(self.device)
        timesteps = torch.full((batch * ensemble,), self.cfg.timestep, device=self.device, dtype=torch.long)
        noisy = self.parts.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.parts.scheduler.get_velocity(latents, noise, timesteps)
        condition = self.condition.expand(batch * ensemble, -1, -1)
        with autocast_context(self.device, self.precision):
            predicted = self.unet(noisy, timesteps, encoder_hidden_states=condition).sample
        error = (predicted.float() - target.float()).pow(2)
        return error.reshape(batch, ensemble, *shape).mean(dim=1).cpu()
