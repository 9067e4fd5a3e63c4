"""Statistics for judging a strategy: Wilson intervals, bootstrap Sharpe intervals, the deflated
Sharpe ratio, and the normal distribution they need (no scipy).

Conventions: ``returns`` are per-bar simple returns; a *per-bar* Sharpe is
``SR = mean(r) / std(r, ddof=1)``, the annualised one is ``SR * sqrt(P)`` with ``P`` bars a year
(as ``trading.metrics.sharpe_ratio``). Skewness and kurtosis are the moment ratios
``g3 = m3 / m2^1.5`` and ``g4 = m4 / m2^2`` (NOT excess: a normal has g4 = 3), ``m_k`` the central
moments with divisor n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EULER_MASCHERONI = 0.5772156649015329

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9 before the
# Halley refinement step, machine precision after it).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def normal_cdf(x: float) -> float:
    """Phi(x) = P(Z <= x) = erfc(-x / sqrt 2) / 2 (erfc keeps the lower tail accurate)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """Phi^-1(p) for 0 < p < 1 (-inf at 0, +inf at 1).

    Acklam's rational approximation in three regions (tails p < 0.02425 use
    q = sqrt(-2 log p)), then one Halley step on f(x) = Phi(x) - p:
    ``u = f(x) sqrt(2 pi) exp(x^2 / 2);  x <- x - u / (1 + x u / 2)``.
    """
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        x = _poly(_C, q) / (_poly(_D, q) * q + 1.0)
    elif p <= 1.0 - _P_LOW:
        q = p - 0.5
        r = q * q
        x = _poly(_A, r) * q / (_poly(_B, r) * r + 1.0)
    else:
        q = math.sqrt(-2.0 * math.log1p(-p))
        x = -_poly(_C, q) / (_poly(_D, q) * q + 1.0)
    error = normal_cdf(x) - p
    u = error * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


def _poly(coefficients: tuple[float, ...], x: float) -> float:
    """Horner: c0 x^(k-1) + ... + c(k-1)."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


# --- direction accuracy -------------------------------------------------------------------------


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p = k / n.

    With z = Phi^-1(1 - (1 - confidence) / 2):

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    (NaN, NaN) for n = 0. It assumes independent trials: for calls whose label horizons
    overlap pass the effective sample size (``overlap_effective_n``) as n and ``p * n_eff`` as
    the successes (both may be fractional).
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    z = normal_ppf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def overlap_effective_n(hit: np.ndarray, call: np.ndarray, horizon: int) -> float:
    """Effective number of independent calls when consecutive calls' horizons overlap.

    ``hit`` and ``call`` are per decision bar in time order (``hit`` counts only where ``call``).
    With ``z_t = call_t (hit_t - p)``, ``p`` the hit rate over the n calls, the variance of the
    number of hits is estimated with Bartlett weights over the lags a horizon of h bars can
    correlate (a Newey-West estimate; never negative):

        Var(S) = sum_t z_t^2 + 2 sum_{k=1}^{h-1} (1 - k/h) sum_t z_t z_{t+k}
        n_eff  = p (1 - p) n^2 / Var(S),   clipped to [1, n]

    Independent calls give n_eff = n; runs of h identical calls give about n / h.
    """
    hit = np.asarray(hit, dtype=np.float64)
    call = np.asarray(call, dtype=bool)
    n = int(call.sum())
    if n == 0:
        return 0.0
    p = float(hit[call].mean())
    if p in (0.0, 1.0) or horizon <= 1:
        return float(n)
    z = np.where(call, hit - p, 0.0)
    variance = float(z @ z)
    for k in range(1, min(horizon, len(z))):
        variance += 2.0 * (1.0 - k / horizon) * float(z[:-k] @ z[k:])
    if not variance > 0:
        return float(n)
    return float(min(max(p * (1.0 - p) * n * n / variance, 1.0), n))


# --- moments and Sharpe ---------------------------------------------------------------------------


def sharpe_per_bar(returns: np.ndarray) -> float:
    """mean(r) / std(r, ddof=1); 0 for fewer than 2 returns or zero spread (a flat strategy)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return 0.0
    std = r.std(ddof=1)
    return float(r.mean() / std) if std > 0 else 0.0


def skewness_kurtosis(returns: np.ndarray) -> tuple[float, float]:
    """(g3, g4) = (m3 / m2^1.5, m4 / m2^2), population central moments; (0, 3) for no spread."""
    r = np.asarray(returns, dtype=np.float64)
    d = r - r.mean()
    m2 = float(np.mean(d**2)) if r.size else 0.0
    if not m2 > 0:
        return (0.0, 3.0)
    return (float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2)


# --- bootstrap ------------------------------------------------------------------------------------


def stationary_bootstrap_indices(n: int, n_samples: int, mean_block_length: float,
                                 rng: np.random.Generator) -> np.ndarray:
    """Politis & Romano (1994) stationary bootstrap: ``[n_samples, n]`` resampled bar indices.

    Each resample is a chain of blocks: at every bar a new block starts with probability
    ``1 / mean_block_length`` (so block lengths are geometric with that mean) at a uniformly
    random bar; inside a block the index advances by one, wrapping around the end. Blocks keep
    the short-range dependence (volatility clusters, positions held over several bars) that an
    i.i.d. bootstrap would destroy.
    """
    if mean_block_length < 1:
        raise ValueError("mean_block_length must be >= 1")
    new_block = rng.random((n_samples, n)) < 1.0 / mean_block_length
    new_block[:, 0] = True
    starts = rng.integers(0, n, size=(n_samples, n))
    t = np.arange(n)
    block_start = np.maximum.accumulate(np.where(new_block, t, 0), axis=1)
    first = np.take_along_axis(starts, block_start, axis=1)
    return (first + t - block_start) % n


def bootstrap_sharpes(returns: np.ndarray, periods_per_year: float, n_samples: int = 1000,
                      mean_block_length: float = 24.0, seed: int = 0,
                      chunk: int = 100) -> np.ndarray:
    """Annualised Sharpe of every bootstrap resample: ``[n_samples, k]`` for returns ``[n, k]``
    (``[n_samples]`` for a 1-D input). All columns share the resampled indices (a *paired*
    bootstrap), so differences between columns have a valid distribution too. Seeded: the same
    inputs and seed give the same numbers.
    """
    r = np.asarray(returns, dtype=np.float64)
    one_dimensional = r.ndim == 1
    r = r.reshape(len(r), -1)
    n = len(r)
    rng = np.random.default_rng(seed)
    out = np.zeros((n_samples, r.shape[1]))
    if n < 2:
        return out[:, 0] if one_dimensional else out
    for start in range(0, n_samples, chunk):
        size = min(chunk, n_samples - start)
        sample = r[stationary_bootstrap_indices(n, size, mean_block_length, rng)]  # [s, n, k]
        mean = sample.mean(axis=1)
        std = sample.std(axis=1, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sharpe = np.where(std > 0, mean / std, 0.0)
        out[start:start + size] = sharpe * math.sqrt(periods_per_year)
    return out[:, 0] if one_dimensional else out


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The (1 - c)/2 and (1 + c)/2 quantiles of bootstrap samples (percentile interval)."""
    low, high = np.quantile(np.asarray(samples, dtype=np.float64),
                            [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return (float(low), float(high))


# --- deflated Sharpe ratio --------------------------------------------------------------------


def expected_max_sharpe(n_trials: int, trial_sharpe_variance: float) -> float:
    """E[max SR] of ``n_trials`` trials whose true Sharpe is 0 (Bailey & Lopez de Prado 2014):

        SR0 = sqrt(V) * ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))

    gamma = 0.5772... (Euler-Mascheroni), V the variance of the trials' Sharpes, in the same
    units (per bar) as the Sharpe it is compared with. SR0 = 0 for a single trial.
    """
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    if n_trials == 1:
        return 0.0
    n = float(n_trials)
    return math.sqrt(max(trial_sharpe_variance, 0.0)) * (
        (1.0 - EULER_MASCHERONI) * normal_ppf(1.0 - 1.0 / n)
        + EULER_MASCHERONI * normal_ppf(1.0 - 1.0 / (n * math.e)))


def probabilistic_sharpe_ratio(sharpe: float, benchmark: float, n_obs: int, skewness: float,
                               kurtosis: float) -> float:
    """PSR(SR*) = Phi( (SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2) ).

    The probability that the true Sharpe exceeds SR* given the estimate SR from T returns with
    skewness g3 and kurtosis g4 (Bailey & Lopez de Prado 2012). Per-bar Sharpes. NaN when the
    variance term is not positive or T < 2.
    """
    variance_term = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    if n_obs < 2 or not variance_term > 0:
        return math.nan
    return normal_cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance_term))


@dataclass(frozen=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio and what went into it (Sharpes per bar)."""

    dsr: float
    sharpe: float
    expected_max_sharpe: float
    n_trials: int
    trial_sharpe_variance: float
    n_obs: int
    skewness: float
    kurtosis: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int,
                          trial_sharpe_variance: float) -> DeflatedSharpe:
    """DSR = PSR(SR0) with SR0 = ``expected_max_sharpe(N, V)`` (Bailey & Lopez de Prado 2014):

        DSR = Phi( (SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2) )

    the probability that the strategy's true Sharpe is above 0 after allowing for having picked
    the best of N configurations whose per-bar Sharpes vary with variance V. SR, g3, g4 and T
    come from ``returns``. A value below 0.95 is no evidence of skill at the 5% level.
    """
    r = np.asarray(returns, dtype=np.float64)
    sharpe = sharpe_per_bar(r)
    skewness, kurtosis = skewness_kurtosis(r)
    sr0 = expected_max_sharpe(n_trials, trial_sharpe_variance)
    dsr = probabilistic_sharpe_ratio(sharpe, sr0, r.size, skewness, kurtosis)
    if r.size < 2 or not r.std() > 0:
        dsr = math.nan
    return DeflatedSharpe(dsr, sharpe, sr0, int(n_trials), float(trial_sharpe_variance), int(r.size),
                          skewness, kurtosis)


def drawdown_curve(returns: np.ndarray) -> np.ndarray:
    """E_t / max_{s<=t} E_s - 1 for the equity E compounded from 1 by ``returns`` (E_0 = 1)."""
    equity = np.concatenate(([1.0], np.cumprod(1.0 + np.asarray(returns, dtype=np.float64))))
    return equity / np.maximum.accumulate(equity) - 1.0
