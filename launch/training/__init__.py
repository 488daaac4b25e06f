"""The parts of the training loop in `launch/train.py`: steps, schedule, checkpoints, logging, samples,
evaluation, signals and timing, one idea per module."""
