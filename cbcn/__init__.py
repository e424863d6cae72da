"""cbcn: Circulant Binary Convolutional Networks (Liu et al., CVPR 2019) — reference implementation and benchmark suite."""
__version__ = "0.1.0"
