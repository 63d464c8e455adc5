"""recondec: classifiers augmented with decoding pathways (Zhang, Lee & Lee, ICML 2016)."""
