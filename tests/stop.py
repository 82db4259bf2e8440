"""A fastai callback that stops a run the way Ctrl-C does, for the tests that interrupt and resume runs."""

from fastai.callback.core import Callback


class StopAfter(Callback):
    """Raise KeyboardInterrupt after `n` training batches, as Ctrl-C would."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def after_batch(self):
        if self.learn.training:
            self.seen += 1
            if self.seen >= self.n:
                raise KeyboardInterrupt
