"""Models: loading of frozen backbones, tiny test models, frozen feature extractors, trainable heads."""
