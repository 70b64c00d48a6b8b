"""The exact McNemar test of two classifiers scored on the same test images."""

import math


def exact_mcnemar(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts.

    Args:
        only_first: images the first model gets right and the second wrong.
        only_second: images the second model gets right and the first wrong.

    Returns:
        ``P(|X - n/2| >= |only_first - n/2|)`` for ``X ~ Binomial(n, 1/2)``,
        ``n = only_first + only_second`` (1.0 when ``n`` is 0).

    Example:
        >>> round(exact_mcnemar(10, 2), 4)
        0.0386
    """
    if min(only_first, only_second) < 0:
        raise ValueError(f"Invalid discordant counts. Received: {only_first}, {only_second}. "
                         "Expected integers >= 0.")
    n, low = only_first + only_second, min(only_first, only_second)
    tail = sum(math.comb(n, k) for k in range(low + 1))
    return min(1.0, 2 * tail / 2**n)
