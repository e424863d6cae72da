"""The paper's method and its baselines as PyTorch modules.

- ``binarize``: sign and the surrogate gradients (Eq. 10), by short name;
- ``cif``: circulant filters, the rotated bank and its back-propagation (Eqs. 1, 2, 7, 8);
- ``bases``: ABC-Net's M shifted weight bases (least-squares α) and N shifted activations;
- ``methods``: fp, bnn, bwn, xnor, bireal, cbcn, abcnet as plain data, and the ablation switches;
- ``layers``: ``BinaryConv2d``, the one layer family all methods share;
- ``models``: the backbones (LeNet, ResNet18, WRN) built from it;
- ``center_loss``: the paper's optional center loss.
"""
