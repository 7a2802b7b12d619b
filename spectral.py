"""Linear filters along one image axis, in the basis that diagonalises them: the blur operator's
cumulative Gaussian (DCT-I or real Fourier) and blur diffusion's orthonormal DCT-II.

Each transform has two exact implementations, picked by the axis length: a dense n x n matmul
(fastest for the small images models train on) and the FFT, whose cost grows as n log n where
the matmul grows as n^2 per row and its set-up as n^3 (a 12-megapixel photo). DENSE_MAX is the
crossover measured on the CPU (`benchmarks/degrade.py --crossover`); tests set it to 0 to check
the FFT path against the same slow references.
"""
from __future__ import annotations

import math

import torch

DENSE_MAX = 384


def gaussian_kernel1d(k: int, sigma: float) -> torch.Tensor:
    """Normalised k-tap Gaussian (float64). The 2-D kernel of the papers is its outer product."""
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def period(n: int, padding: str) -> int:
    # reflect padding (PyTorch's: edge not repeated) makes the signal whole-sample symmetric,
    # i.e. periodic with period 2n-2: the DCT-I. Circular padding is periodic with period n.
    return n if padding == "circular" else max(2 * n - 2, 1)


def kernel_response(g: torch.Tensor, p: int) -> torch.Tensor:
    """Frequency responses of centred symmetric kernels g (..., k) on a circle of `p` samples.

    Real because each kernel is symmetric: sum_j g_j cos(2 pi j k / p), k = 0..p//2. One cosine
    table serves every kernel of a length (a blur's T kernels: one matmul, not T tables), built
    in chunks of bins so that it stays at 2^22 numbers however long the axis.
    Taps that reach further than the period wrap around, as circular padding does."""
    j = torch.arange(g.shape[-1], dtype=torch.float64) - (g.shape[-1] - 1) / 2
    k = torch.arange(p // 2 + 1, dtype=torch.float64)
    out = torch.empty(g.shape[:-1] + k.shape, dtype=torch.float64)
    chunk = max(1, 2**22 // len(j))
    for a in range(0, len(k), chunk):
        out[..., a : a + chunk] = g @ torch.cos(2 * math.pi * j[:, None] * k[None, a : a + chunk] / p)
    return out


def filter_basis(n: int, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, freq): a real basis of R^n in which every symmetric filter with this padding is diagonal.

    Column m of V is an eigenvector whose eigenvalue is the kernel's response at frequency
    bin freq[m] (of `kernel_response` with the axis's period). reflect: the DCT-I cosines
    cos(pi j k / (n-1)); circular: the real Fourier basis, cos and sin sharing a frequency."""
    j = torch.arange(n, dtype=torch.float64)[:, None]
    if padding == "reflect" or n == 1:
        k = torch.arange(n, dtype=torch.float64)
        V = torch.cos(math.pi * j * k / max(n - 1, 1)) if n > 1 else torch.ones(1, 1, dtype=torch.float64)
        return V, torch.arange(n)
    cols, freq = [torch.ones(n, 1, dtype=torch.float64)], [0]
    for k in range(1, (n - 1) // 2 + 1):
        cols += [torch.cos(2 * math.pi * j * k / n), torch.sin(2 * math.pi * j * k / n)]
        freq += [k, k]
    if n % 2 == 0:
        cols.append(torch.cos(math.pi * j))
        freq.append(n // 2)
    return torch.cat(cols, 1), torch.tensor(freq)


class AxisBlur:
    """Every cumulative blur G_t * ... * G_1 (t = 0..T) along one axis of length n.

    Dense: x -> V diag(eig[t]) V^-1 x. FFT: the axis is extended to one period of its padding
    (reflect: x_0..x_{n-1}, x_{n-2}..x_1), and rfft bin k is scaled by the kernels' product of
    responses at k; the first n samples of the inverse are the result. Both are exact."""

    def __init__(self, kernels: list[torch.Tensor], n: int, padding: str, device):
        self.n, self.padding, self.period = n, padding, period(n, padding)
        self.dense = n <= DENSE_MAX
        if self.dense:
            V, freq = filter_basis(n, padding)
            self.V, self.V_inv = V.float().to(device), torch.linalg.inv(V).float().to(device)
        steps = kernel_response(torch.stack(kernels), self.period)
        if self.dense:
            steps = steps[:, freq]
        eig = torch.cat([torch.ones(1, steps.shape[1], dtype=torch.float64), torch.cumprod(steps, 0)])
        self.eig = eig.float().to(device)  # (T+1, n) dense, (T+1, period//2+1) FFT

    def __call__(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """x (B, ..., n) blurred along its last axis by image b's steps[b] kernels. (The last
        axis: the FFT of a contiguous axis is about 3x faster than of a strided one.)"""
        e = self.eig[steps].view((x.shape[0],) + (1,) * (x.ndim - 2) + (-1,))
        if self.dense:
            return (x @ self.V_inv.T * e) @ self.V.T
        if self.padding == "reflect" and self.n > 2:
            x = torch.cat([x, x.flip(-1)[..., 1 : self.n - 1]], -1)
        X = torch.fft.rfft(x)
        X *= e
        return torch.fft.irfft(X, n=self.period)[..., : self.n]


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II, (n, n) float64: C @ x are the coefficients, C.T @ c inverts exactly."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    C = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2 / n)
    C[0] /= math.sqrt(2)
    return C


_DCT: dict = {}


def _dct_parts(n: int, device):
    """The cached pieces of one length: the dense matrix, or the FFT's twiddles with the scales folded in."""
    key = (n, str(device), n <= DENSE_MAX)
    if key not in _DCT:
        if n <= DENSE_MAX:
            _DCT[key] = dct_matrix(n).float().to(device)
        else:
            k = torch.arange(n, dtype=torch.float64)
            scale = torch.full((n,), math.sqrt(2 / n), dtype=torch.float64)
            scale[0] = math.sqrt(1 / n)
            cos, sin = torch.cos(math.pi * k / (2 * n)), torch.sin(math.pi * k / (2 * n))
            m = n // 2 + 1
            parts = {
                "cos_s": cos * scale, "sin_s": sin * scale,  # DCT: s_k e^{-i pi k / 2n}
                "cos_is": cos[:m] / scale[:m], "sin_is": sin[:m] / scale[:m],  # IDCT: X_k = c_k / s_k
                "cos_r": cos[:m] / scale[-1], "sin_r": sin[:m] / scale[-1],  # X_{n-k} = c_{n-k} / s_1
            }
            _DCT[key] = {k: v.float().to(device) for k, v in parts.items()}
    return _DCT[key]


def dct(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DCT-II along `dim`. Long axes: Makhoul's algorithm, the rfft of the even
    samples followed by the odd ones reversed, V, then c_k = s_k Re(e^{-i pi k / 2n} V_k), where
    V_k = conj(V_{n-k}) supplies the bins past n/2 that the rfft leaves out. (Slices and flips:
    on the CPU they copy several times faster than a gather by an index.)"""
    n = x.shape[dim]
    p = _dct_parts(n, x.device)
    x = x.movedim(dim, -1)
    if n <= DENSE_MAX:
        return (x @ p.T).movedim(-1, dim)
    V = torch.fft.rfft(torch.cat([x[..., 0::2], x[..., 1::2].flip(-1)], -1))
    m = n // 2 + 1
    c = torch.empty(V.shape[:-1] + (n,), device=x.device)
    # written in place into c's two halves: at 12 megapixels every temporary costs as much as the FFT
    torch.mul(V.real, p["cos_s"][:m], out=c[..., :m]).addcmul_(V.imag, p["sin_s"][:m])
    mirror = V[..., 1 : n - m + 1].flip(-1)  # V_{n-k} for k = m..n-1
    torch.mul(mirror.real, p["cos_s"][m:], out=c[..., m:]).addcmul_(mirror.imag, p["sin_s"][m:], value=-1)
    return c.movedim(-1, dim)


def idct(c: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `dct` along `dim`. Long axes: V_k = e^{i pi k / 2n} (X_k - i X_{n-k}) with
    X = c / s and X_n = 0 for k = 0..n/2 (V is Hermitian), the irfft, and the even-odd order undone."""
    n = c.shape[dim]
    p = _dct_parts(n, c.device)
    c = c.movedim(dim, -1)
    if n <= DENSE_MAX:
        return (c @ p).movedim(-1, dim)
    m = n // 2 + 1
    c_k = c[..., :m]
    c_rev = torch.cat([torch.zeros_like(c[..., :1]), c[..., n - m + 1 :].flip(-1)], -1)  # c_{n-k}; X_n = 0
    V = torch.complex(c_k * p["cos_is"], c_k * p["sin_is"])
    V.real.addcmul_(p["sin_r"], c_rev)
    V.imag.addcmul_(p["cos_r"], c_rev, value=-1)
    v = torch.fft.irfft(V, n=n)
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[..., 0::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip(-1)
    return x.movedim(-1, dim)
