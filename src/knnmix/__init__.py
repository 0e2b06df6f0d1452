"""knnmix: learning with noisy labels by mixing each sample with its clean-weighted nearest neighbours."""

__version__ = "0.1.0"
