"""The error a training run stops with when it cannot go on (not a user's config mistake)."""


class TrainingError(RuntimeError):
    """A run that must stop: a non-finite loss, or a checkpoint that does not match this run. The message
    is one line naming the step, term or file at fault."""
