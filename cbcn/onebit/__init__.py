"""1-bit inference: trained binary models stored and run as packed bits.

- ``convert``: ``convert_to_onebit`` (a trained model -> ``OneBitConv2d`` layers holding packed
  signs), the 1-bit checkpoint (``save_onebit`` / ``load_onebit``);
- ``fused``: whole residual blocks fused into one packed call chain;
- ``backends``: the one 1-bit API (``get_ops``) and its backends: ``reference`` (plain PyTorch,
  the oracle), ``cpu`` (the CPU engine: XOR + popcount in C) and the Triton kernels
  (``triton_kernels/``, top level), with ``contract`` (the packing format and argument checks)
  and ``epilogue`` (the one output transform).
"""
