"""Exact unsigned 64-bit arithmetic on (hi, lo) uint32 word pairs in JAX.

With `jax_enable_x64` off (the default) JAX has no 64-bit integers, and
int32 products wrap silently. These helpers keep every intermediate in
uint32 so the N-gram hash stays bit-exact with the numpy int64 version.
Arithmetic on uint32 arrays wraps modulo 2^32, which the helpers rely on.
Constants are passed as Python ints and converted to `np.uint32` here,
because a Python int above 2^31 - 1 cannot enter a JAX op with x64 off.
"""

import jax
import numpy as np

U64Pair = tuple[jax.Array, jax.Array]  # (hi, lo) uint32 words of one value
_LOW16 = np.uint32(0xFFFF)
_LOW8 = np.uint32(0xFF)
# A remainder below 2^24 times 256 plus one byte stays below 2^32.
MAX_MODULUS = 2**24


def split_u64(value: int) -> tuple[np.uint32, np.uint32]:
  """Split a Python int in [0, 2^64) into its (hi, lo) uint32 words."""
  if not 0 <= value < 2**64:
    raise ValueError(f"value={value} is outside [0, 2^64) and has no uint64 representation.")
  return np.uint32(value >> 32), np.uint32(value & 0xFFFFFFFF)


def mul_u32_wide(a: jax.Array, b: jax.Array | np.uint32) -> U64Pair:
  """Return the full 64-bit product of two uint32 operands as (hi, lo).

  Each factor splits into 16-bit limbs so that all four partial products fit
  uint32. The middle column sums three values below 2^16, so it cannot overflow.
  """
  a_hi, a_lo = a >> 16, a & _LOW16
  b_hi, b_lo = b >> 16, b & _LOW16
  low_low = a_lo * b_lo
  low_high = a_lo * b_hi
  high_low = a_hi * b_lo
  high_high = a_hi * b_hi
  middle = (low_low >> 16) + (low_high & _LOW16) + (high_low & _LOW16)
  lo = (low_low & _LOW16) | (middle << 16)
  hi = high_high + (low_high >> 16) + (high_low >> 16) + (middle >> 16)
  return hi, lo


def mul_u32_by_const(x: jax.Array, multiplier: int) -> U64Pair:
  """Return x * multiplier modulo 2^64 as (hi, lo), for uint32 `x` and an int in [0, 2^64).

  The result is exact whenever the true product is below 2^64, because the
  high multiplier word then only adds x * m_hi modulo 2^32 to the high word.
  """
  m_hi, m_lo = split_u64(multiplier)
  hi, lo = mul_u32_wide(x, m_lo)
  return hi + x * m_hi, lo


def xor(a: U64Pair, b: U64Pair) -> U64Pair:
  return a[0] ^ b[0], a[1] ^ b[1]


def xor_const(a: U64Pair, value: int) -> U64Pair:
  """XOR a (hi, lo) pair with a Python int in [0, 2^64)."""
  v_hi, v_lo = split_u64(value)
  return a[0] ^ v_hi, a[1] ^ v_lo


def mod_small(value: U64Pair, modulus: jax.Array) -> jax.Array:
  """Return value mod modulus exactly, as uint32, for uint32 moduli in [1, 2^24).

  Horner's rule over bytes: r = hi mod p, then r = (r * 256 + byte) mod p for
  the four bytes of lo, high byte first. With r < p < 2^24 the intermediate
  r * 256 + byte stays below 2^32. `value` and `modulus` broadcast together.
  """
  hi, lo = value
  remainder = hi % modulus
  for shift in (24, 16, 8, 0):
    byte = (lo >> shift) & _LOW8
    remainder = ((remainder << 8) | byte) % modulus
  return remainder
