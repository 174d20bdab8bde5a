"""Noise-level grids for samplers that integrate in sigma.

  sigmas = karras_sigmas(18)                   # 19 levels: 80 ... 0.002, 0
  x = heun(pf_ode_velocity, 80.0 * z, sigmas, final_euler=True)   # 35 NFE

Grids are numpy float64 arrays: EDM computes its time grid in float64 (ALGORITHMS.md
§1 pitfalls); the solvers cast them to the x64 setting in force when they run.
"""
import numpy as np

from gensuite.errors import ConfigError


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0, append_zero: bool = True) -> np.ndarray:
  """EDM's rho-spaced levels (Karras et al. 2022, eq. 5), decreasing.

  sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
  for i = 0..n-1, then sigma_n = 0 when append_zero (n + 1 points, n steps). Larger
  rho concentrates levels near sigma_min, where the ODE's curvature is largest.
  """
  if n < 1:
    raise ValueError(f'karras_sigmas needs n >= 1, got {n}')
  if not 0.0 < sigma_min <= sigma_max:
    raise ValueError(f'need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}')
  frac = np.arange(n, dtype=np.float64) / max(n - 1, 1)
  lo, hi = sigma_min**(1.0 / rho), sigma_max**(1.0 / rho)
  sigmas = (hi + frac * (lo - hi))**rho
  if append_zero:
    sigmas = np.append(sigmas, 0.0)
  return sigmas


def ve_sigmas(n: int, sigma_min: float = 0.01, sigma_max: float = 50.0,
              append_zero: bool = True) -> np.ndarray:
  """Geometric levels sigma_max ... sigma_min (the VE SDE's sigma(t) on a uniform t grid
  from 1 to 0), then 0 when append_zero: n + 1 points, n steps."""
  if n < 1:
    raise ValueError(f've_sigmas needs n >= 1, got {n}')
  if not 0.0 < sigma_min <= sigma_max:
    raise ValueError(f'need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}')
  sigmas = np.geomspace(sigma_max, sigma_min, n)
  return np.append(sigmas, 0.0) if append_zero else sigmas


def vp_sigmas(n: int, t_eps: float = 1e-3, beta_min: float = 0.1, beta_max: float = 20.0,
              append_zero: bool = True) -> np.ndarray:
  """VE-frame levels sigma = b_t / a_t of the VP SDE on a uniform t grid from 1 to t_eps,
  then 0 when append_zero (the frame change is gensuite.samplers.frames)."""
  if n < 1:
    raise ValueError(f'vp_sigmas needs n >= 1, got {n}')
  t = np.linspace(1.0, t_eps, n)
  log_a = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
  sigmas = np.sqrt(np.expm1(-2.0 * log_a))
  return np.append(sigmas, 0.0) if append_zero else sigmas


def sigma_grid(kind: str, n: int, **options) -> np.ndarray:
  """The grid `kind` ('karras', 've', 'vp') with n steps, ending at 0."""
  builders = {'karras': karras_sigmas, 've': ve_sigmas, 'vp': vp_sigmas}
  if kind not in builders:
    raise ConfigError(f'unknown sigma grid {kind!r}; allowed: {", ".join(sorted(builders))}')
  return builders[kind](n, **options)
