"""Data: DF40 lists and folders, the synthetic mini-DF40, image decoding and views."""
