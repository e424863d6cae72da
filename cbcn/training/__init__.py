"""Training one model on one data set, on a CPU, a GPU or many GPUs.

- ``profiles``: the one profile registry (``smoke``, ``quick``, ``paper``): what to run, how long,
  on how many threads, how hard to measure;
- ``train``: ``TrainConfig`` and the training loop, in named steps (set-up, resume, epoch,
  evaluation, finish);
- ``checkpoint``: atomic checkpoints and exact resume;
- ``distributed``: ``torchrun`` data parallelism (``DistInfo``);
- ``progress``: progress bars and lines.
"""
