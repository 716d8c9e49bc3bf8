"""Receptive-field arithmetic along one input dimension, in exact fractions.

A tensor's units along one axis see boxes of input pixels that move by a fixed
``jump`` from unit to unit: unit ``i`` sees pixels ``lo + i*jump`` to
``hi + i*jump`` (inclusive; negative or past-the-end pixels lie in padding).
Every operation below maps that description through one layer. ``Fraction``
keeps transposed convolution and upsampling (jumps below one pixel) exact.

The classic recurrences (size, jump, start) are the special case of a single
path; keeping ``lo`` and ``hi`` instead of a size lets paths with different
padding be merged with their true alignment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Span:
    """The field of a tensor's units along one input dimension.

    ``axis`` is the tensor axis the units lie along, or None when the tensor
    no longer has an axis for this dimension (after global pooling, a linear
    layer); then every element sees the same box and ``jump`` is 0.
    ``step`` and ``centre`` describe where the units sit (the effective
    stride, and the centre of unit 0 in input pixels); they follow the main
    path and are None once the axis is gone.
    ``exact`` False: the box is an upper bound (it contains the true field).
    ``dense`` False: the box may hold pixels the unit never sees (dilation,
    or a stride larger than the field below it).
    ``flat`` True: positions were flattened into this axis without mixing;
    each element sees part of the box shown, which is the union.
    """

    axis: int | None
    lo: Fraction
    hi: Fraction
    jump: Fraction
    step: Fraction | None
    centre: Fraction | None
    exact: bool = True
    dense: bool = True
    flat: bool = False

    @property
    def size(self) -> Fraction:
        return self.hi - self.lo + 1

    def box(self, unit: int) -> tuple[Fraction, Fraction]:
        """First and last input pixel seen by unit ``unit`` along this dimension."""
        return self.lo + unit * self.jump, self.hi + unit * self.jump

    def replace(self, **changes) -> Span:
        return dataclasses.replace(self, **changes)


def input_span(axis: int) -> Span:
    """The identity field of an input axis: unit ``i`` is pixel ``i``."""
    return Span(axis, Fraction(0), Fraction(0), Fraction(1), Fraction(1), Fraction(0))


def window(span: Span, kernel: int, stride: int, padding: int, dilation: int = 1) -> Span:
    """A sliding window (convolution, pooling, padding, slicing) along the span's axis.

    Output unit ``o`` reads input units ``o*stride - padding + t*dilation`` for
    ``t`` in ``0..kernel-1``. A negative ``padding`` crops.
    """
    if span.flat:
        # A window over flattened positions mixes neighbours whose fields are already
        # inside the union, so the union stays a bound but is no longer exact.
        return span.replace(exact=False)
    reach = dilation * (kernel - 1)
    # Neighbouring taps read fields that start ``dilation * jump`` apart: a gap
    # opens between them when that exceeds the field below.
    dense = span.dense and (kernel == 1 or dilation * span.jump <= span.size)
    return span.replace(
        lo=span.lo - padding * span.jump,
        hi=span.hi + (reach - padding) * span.jump,
        jump=span.jump * stride,
        step=None if span.step is None else span.step * stride,
        centre=None if span.step is None
        else span.centre + span.step * (Fraction(reach, 2) - padding),
        dense=dense,
    )


def transposed_window(span: Span, kernel: int, stride: int, padding: int,
                      dilation: int = 1) -> Span:
    """A transposed convolution: the output is ``stride`` times finer than the input.

    Output unit ``o`` receives input units ``i`` with ``i*stride - padding +
    t*dilation = o``, so ``i`` lies between ``(o + padding - dilation*(kernel-1))
    / stride`` and ``(o + padding) / stride``. Which of those are integers depends
    on ``o mod stride``, so for ``stride > 1`` the box is a bound.
    """
    if span.flat:
        return span.replace(exact=False)
    reach = dilation * (kernel - 1)
    stride_fraction = Fraction(1, stride)
    return span.replace(
        lo=span.lo + (padding - reach) * span.jump * stride_fraction,
        hi=span.hi + padding * span.jump * stride_fraction,
        jump=span.jump * stride_fraction,
        step=None if span.step is None else span.step * stride_fraction,
        centre=None if span.step is None
        else span.centre + span.step * (padding - Fraction(reach, 2)) * stride_fraction,
        # With jump 0 every unit already sees the same box: nothing to round.
        exact=span.exact and (stride == 1 or span.jump == 0),
        dense=span.dense and stride == 1 and (kernel == 1 or dilation * span.jump <= span.size),
    )


def adaptive_window(span: Span, size_in: int, size_out: int) -> Span:
    """Adaptive pooling: unit ``o`` pools ``floor(o*n/m)`` to ``ceil((o+1)*n/m) - 1``.

    Exact when ``n`` is a multiple of ``m`` (then it is a plain pooling with
    kernel = stride = n/m); otherwise the windows wobble by a pixel and the
    box returned is the smallest affine bound.
    """
    if size_in % size_out == 0:
        ratio = size_in // size_out
        return window(span, ratio, ratio, 0)
    if span.flat:
        return span.replace(exact=False)
    ratio = Fraction(size_in, size_out)
    slack = Fraction(size_out - 1, size_out)
    return span.replace(
        lo=span.lo - slack * span.jump,
        hi=span.hi + (ratio - 1 + slack) * span.jump,
        jump=span.jump * ratio,
        step=None if span.step is None else span.step * ratio,
        centre=None if span.step is None else span.centre + span.step * (ratio - 1) / 2,
        exact=span.exact and span.jump == 0,
        dense=span.dense and span.jump <= span.size,
    )


def resample(span: Span, size_in: int, size_out: int, mode: str, align_corners: bool) -> Span:
    """Interpolation (upsampling or downsampling) from ``size_in`` to ``size_out`` units.

    The source coordinate of output unit ``o`` is ``(o + 0.5) * n/m - 0.5``
    (or ``o * (n-1)/(m-1)`` with ``align_corners``); nearest reads the unit
    below it, linear modes one unit either side, cubic two. The box is a bound
    because which units are read depends on ``o``.
    """
    if span.flat:
        return span.replace(exact=False)
    if align_corners and size_out > 1:
        scale = Fraction(size_in - 1, size_out - 1)
        offset = Fraction(0)
    else:
        scale = Fraction(size_in, size_out)
        offset = scale / 2 - Fraction(1, 2)
    reach = {"nearest": (1, 0), "nearest-exact": (1, 1), "linear": (1, 1),
             "bilinear": (1, 1), "trilinear": (1, 1), "bicubic": (2, 2), "area": (1, 1)}[mode]
    if mode == "nearest":
        offset = Fraction(0)  # PyTorch's legacy nearest reads floor(o * n/m)
    return span.replace(
        lo=span.lo + (offset - reach[0]) * span.jump,
        hi=span.hi + (offset + reach[1]) * span.jump,
        jump=span.jump * scale,
        step=None if span.step is None else span.step * scale,
        centre=None if span.step is None else span.centre + span.step * (scale - 1) / 2,
        exact=span.exact and span.jump == 0,
        dense=span.dense and span.jump * scale <= span.size,
    )


def collapse(span: Span, units: int, keep_axis: bool = False, flat: bool = False) -> Span:
    """Every unit along the span's axis mixes with all ``units`` units of it.

    With ``flat`` the positions are only merged into one axis (flatten):
    the union box is kept but elements do not mix, see :class:`Span`.
    """
    hi = span.hi + (units - 1) * span.jump
    dense = span.dense and (units == 1 or span.jump <= span.size)
    keeps_position = keep_axis or flat
    return span.replace(
        axis=span.axis if keeps_position else None,
        hi=hi, jump=Fraction(0), dense=dense,
        flat=flat and (span.flat or units > 1),
        step=span.step if keep_axis else None,
        centre=span.centre if keep_axis else None,
    )


def broadcast(span: Span) -> Span:
    """A size-1 axis broadcast against a longer one: every output unit sees the same box."""
    return span.replace(jump=Fraction(0))


def union(first: Span, second: Span, units: int) -> Span:
    """The field of units that read both inputs (a residual sum, a concatenation).

    ``units`` is the number of output units along the shared axis. With equal
    jumps the union's hull keeps both paths' alignment exactly. With unequal
    jumps (a broadcast gate against a feature map, a path that upsampled) the
    result is exact when one path's box contains the other's for every unit,
    and otherwise the smallest affine box around both, marked as a bound.
    The position (``step``, ``centre``) is taken from the first path.
    """
    last = max(units - 1, 0)
    if first.jump == second.jump:
        lo, hi = min(first.lo, second.lo), max(first.hi, second.hi)
        overlap = max(first.lo, second.lo) <= min(first.hi, second.hi) + 1
        return first.replace(
            lo=lo, hi=hi,
            exact=first.exact and second.exact,
            dense=_union_dense(first, second, overlap),
            flat=first.flat or second.flat,
        )
    for outer, inner in ((first, second), (second, first)):
        if all(_contains(outer, inner, unit) for unit in (0, last)):
            # Boxes move linearly with the unit index, so containment at both
            # ends means containment for every unit in between.
            return first.replace(
                lo=outer.lo, hi=outer.hi, jump=outer.jump,
                exact=outer.exact and inner.exact, dense=outer.dense,
                flat=first.flat or second.flat,
            )
    # min of two lines is concave and max convex, so for a chosen jump the
    # extreme offsets lie at the end units. Of the two jumps, keep the tighter box.
    candidates = []
    for jump in (first.jump, second.jump):
        lo = min(min(first.box(u)[0], second.box(u)[0]) - u * jump for u in (0, last))
        hi = max(max(first.box(u)[1], second.box(u)[1]) - u * jump for u in (0, last))
        candidates.append((hi - lo, lo, hi, jump))
    _, lo, hi, jump = min(candidates)
    return first.replace(lo=lo, hi=hi, jump=jump, exact=False, dense=False,
                         flat=first.flat or second.flat)


def _contains(outer: Span, inner: Span, unit: int) -> bool:
    outer_lo, outer_hi = outer.box(unit)
    inner_lo, inner_hi = inner.box(unit)
    return outer_lo <= inner_lo and inner_hi <= outer_hi


def _union_dense(first: Span, second: Span, overlap: bool) -> bool:
    if first.lo <= second.lo and second.hi <= first.hi:
        return first.dense
    if second.lo <= first.lo and first.hi <= second.hi:
        return second.dense
    return first.dense and second.dense and overlap
