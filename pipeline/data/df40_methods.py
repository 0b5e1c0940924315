"""DF40's 40 methods: their four families, which are known (trained on, an `_ff` and a `_cdf`
list each) and which unknown, and a subset name's method (docs/design.md §4)."""

from __future__ import annotations

# DF40's four families and each method's list stem (the DF40 README's folder names; a known
# method has `<stem>_ff` and `<stem>_cdf` lists, an unknown one a single `<stem>` list).
# Known (trained on) vs unknown follows the DF40 README: FS 9 + 1, FR 12 + 1, EFS 10 + 2,
# FE 0 + 5 (docs/design.md §4; the DF40 homepage differs by one or two per family).
DF40_FAMILIES = ("FS", "FR", "EFS", "FE")
DF40_KNOWN: dict[str, tuple[str, ...]] = {
    "FS": ("fsgan", "faceswap", "simswap", "inswap", "blendface", "uniface", "mobileswap", "e4s",
           "facedancer"),
    "FR": ("fomm", "facevid2vid", "wav2lip", "MRAA", "one_shot_free", "pirender", "tpsm", "lia",
           "danet", "sadtalker", "mcnet", "hyperreenact"),
    "EFS": ("VQGAN", "StyleGAN2", "StyleGAN3", "StyleGANXL", "sd2.1", "ddim", "rddm", "pixart",
            "DiT", "SiT"),
    "FE": (),
}
DF40_UNKNOWN: dict[str, tuple[str, ...]] = {
    "FS": ("deepfacelab",),
    "FR": ("heygen",),
    "EFS": ("MidJourney", "whichisreal"),
    "FE": ("CollabDiff", "e4e", "stargan", "starganv2", "styleclip"),
}
# Other spellings of a stem met in DF40's README, folders and lists (matched without case).
_DF40_ALIASES = {"whichfaceisreal": "whichisreal", "ddpm": "ddim"}


def df40_method(subset: str) -> tuple[str, str, bool] | None:
    """(family, domain 'ff' | 'cdf' | '', known) of a DF40 subset name such as `simswap_cdf` or
    `heygen`; None for a name that is not one of DF40's 40 methods. Case is ignored."""
    name = subset.lower()
    domain = ""
    for suffix in ("_ff", "_cdf"):
        if name.endswith(suffix):
            name, domain = name[: -len(suffix)], suffix[1:]
    name = _DF40_ALIASES.get(name, name)
    for family in DF40_FAMILIES:
        if name in {m.lower() for m in DF40_KNOWN[family]}:
            return family, domain, True
        if not domain and name in {m.lower() for m in DF40_UNKNOWN[family]}:
            return family, domain, False
    return None
