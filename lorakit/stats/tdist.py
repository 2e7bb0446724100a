r"""The Student-t distribution without scipy: the regularized incomplete beta, the t CDF and quantile.

:func:`t_cdf` uses :math:`1 - F_\nu(x) = \tfrac12 I_{\nu/(\nu+x^2)}(\nu/2, 1/2)` for :math:`x \ge 0`;
:func:`betainc` evaluates :math:`I_x(a, b)` by its continued fraction (modified Lentz); :func:`t_ppf`
inverts the CDF by bracketing and bisection. Tested against scipy to 1e-9 (tests/test_stats.py).
"""

from __future__ import annotations

import math

from ..errors import LorakitError


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of :math:`I_x(a, b)` (modified Lentz), valid for ``x < (a+1)/(a+b+2)``."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 / max(1.0 - (a + b) * x / (a + 1.0), tiny, key=abs)
    h = d
    for m in range(1, 100_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / max(1.0 + num * d, tiny, key=abs)
            c = max(1.0 + num / c, tiny, key=abs)
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise LorakitError(f"incomplete beta did not converge for a={a}, b={b}, x={x}; report this")  # pragma: no cover


def betainc(a: float, b: float, x: float) -> float:
    r"""Regularized incomplete beta :math:`I_x(a,b) = \frac{1}{B(a,b)}\int_0^x u^{a-1}(1-u)^{b-1}du`."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise LorakitError(f"betainc needs a > 0, b > 0 and 0 ≤ x ≤ 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_tail(x: float, df: float) -> float:
    r"""Upper tail :math:`1 - F_\nu(x) = \tfrac12 I_{\nu/(\nu+x^2)}(\nu/2, 1/2)` for ``x ≥ 0`` (exact when tiny)."""
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + x * x)) if x < math.inf else 0.0


def t_cdf(x: float, df: float) -> float:
    r"""Student-t CDF :math:`F_\nu(x)` with :math:`\nu` = ``df`` degrees of freedom."""
    if not df > 0:
        raise LorakitError(f"degrees of freedom must be positive, got {df!r}")
    return math.nan if math.isnan(x) else 1.0 - _t_tail(x, df) if x > 0 else _t_tail(-x, df)


def t_ppf(q: float, df: float) -> float:
    """Student-t quantile: the ``x`` with ``t_cdf(x, df) == q``, by bracketing and bisection to the last bit."""
    if not (0.0 < q < 1.0 and df > 0):
        raise LorakitError(f"a t quantile needs 0 < q < 1 and df > 0, got q={q!r}, df={df!r}")
    p, lo, hi = min(q, 1.0 - q), 0.0, 1.0  # p: the tail probability to hit, exact for tiny q
    while _t_tail(hi, df) > p:
        lo, hi = hi, hi * 2.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_tail(mid, df) > p else (lo, mid)
    x = hi if abs(_t_tail(hi, df) - p) <= abs(_t_tail(lo, df) - p) else lo
    return 0.0 if p == 0.5 else x if q > 0.5 else -x
