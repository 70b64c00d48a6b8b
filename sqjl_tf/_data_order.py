"""Reading a shuffled training split in the uninterrupted run's order after a resume.

Each iteration of a seeded, reshuffling ``tf.data`` dataset has its own order
(and augmentation): the dataset's seed generators move on when an iterator is
made. A resumed run that skips finished epochs makes, unread, the iterations
those epochs made, so its later epochs read what the uninterrupted run's read.
How many ``fit`` makes is Keras 3's epoch iterator's rule (``fit_iterations``).
"""

from absl import logging

ITERATIONS_PER_EPOCH = 2  # of fit without steps_per_epoch: one per epoch, one made ahead


def skip_iterations(dataset, count: int) -> None:
    """Moves ``dataset`` on by ``count`` iterations; the iterators are dropped, unread."""
    for _ in range(count):
        iter(dataset)


def fit_iterations(epochs: int, steps_per_epoch: int, batches: int) -> int:
    """The iterators ``fit(epochs=, steps_per_epoch=)`` makes of a dataset of ``batches``.

    Keras 3's epoch iterator makes one at the first epoch and keeps it across
    epochs; after an epoch that has read all ``batches`` since it was made, it
    makes the next one.
    """
    made, seen = 1, 0
    for _ in range(epochs):
        seen = min(seen + steps_per_epoch, batches)  # an epoch stops at the data's end
        if seen >= batches:
            made, seen = made + 1, 0
    return made


def skip_fit(dataset, epochs: int, steps_per_epoch: int) -> None:
    """Moves ``dataset`` on by what one ``fit`` of ``epochs`` made of it (none for 0).

    Args:
        dataset: the batched training split that ``fit`` read.
        epochs: the epochs of the skipped ``fit``.
        steps_per_epoch: the ``steps_per_epoch`` it was given.
    """
    if not epochs:
        return
    batches = int(dataset.cardinality())
    if batches < 1:  # unknown or infinite
        logging.warning("The training data's length is unknown: the resumed run reads its later "
                        "epochs in another order than the uninterrupted run.")
        return
    skip_iterations(dataset, fit_iterations(epochs, steps_per_epoch, batches))
