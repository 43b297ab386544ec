"""Exact counts of the on-units two images share: 0/1 Gram matrices of packed paths.

A count ``sum_u b_iu * b_ju`` of 0/1 bits is an entry of a Gram matrix. The
packed bits are sent to the device (an eighth of the unpacked bytes),
unpacked there once per chunk of units and multiplied in the cheapest
arithmetic whose sums stay exact: int8 with int32 sums (``torch._int_mm``,
which oneDNN runs on the VNNI/AMX units of recent x86 CPUs) on the CPU, and
float32 elsewhere (a GPU, or a torch without ``_int_mm``): products of 0/1
are 0/1 and sums of fewer than ``2**24`` of them are exact integers, also
under TF32 or bf16 matmul settings, whose inputs hold 0 and 1 exactly. For
few pairs, the popcount of the AND of the two packed rows. Every count is an
exact int64, whatever the device, the chunk size or the path taken.
"""

from collections import namedtuple

import numpy as np
import torch

__all__ = ["gram_matrix", "gram_rows", "pair_counts", "pair_plan", "popcount_rows", "to_device"]

# float32 holds every integer up to 2**24: the most 0/1 terms one float32 sum may take
_FLOAT32_EXACT_TERMS = 2**24
_POPCOUNT = np.array([byte.bit_count() for byte in range(256)], dtype=np.uint8)
_SHIFTS = (7, 6, 5, 4, 3, 2, 1, 0)  # np.packbits order: the first unit is the high bit

# The pairs of a call: read from Gram rows (dense) or row by row; see pair_plan.
PairPlan = namedtuple("PairPlan", "pairs dense blocks flat")


def _batches(n, size):
    """``sklearn.utils.gen_batches`` without its per-call parameter validation (hot loops)."""
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def popcount_rows(packed, working_memory):
    """Number of set bits of each row of a uint8 array, int64 (numpy, exact)."""
    counts = np.empty(len(packed), dtype=np.int64)
    n_rows = max(1, working_memory // max(1, packed.shape[1]))
    for rows in _batches(len(packed), n_rows):
        counts[rows] = _popcount(packed[rows]).sum(axis=1, dtype=np.int64)
    return counts


def _popcount(block):
    return np.bitwise_count(block) if hasattr(np, "bitwise_count") else _POPCOUNT[block]


def to_device(packed, device):
    """A uint8 numpy array as a tensor on ``device`` (no copy of a writable C-order array)."""
    packed = np.ascontiguousarray(packed)
    if not packed.flags.writeable:
        # torch.from_numpy warns on a read-only array
        packed = packed.copy()
    return torch.from_numpy(packed).to(device)


def _int8_gemm(device):
    return device.type == "cpu" and hasattr(torch, "_int_mm")


def _unpack(packed, int8):
    """``np.unpackbits(packed, axis=1)`` of a uint8 tensor, as int8 or float32 0/1."""
    if packed.device.type == "cpu":
        bits = torch.from_numpy(np.unpackbits(packed.numpy(), axis=1))
    else:
        bits = _unpackbits_torch(packed)
    return bits.view(torch.int8) if int8 else bits.to(torch.float32)


def _unpackbits_torch(packed):
    """``np.unpackbits(packed, axis=1)`` of a 2-D uint8 tensor, computed by torch."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(2) >> shifts) & 1).reshape(len(packed), -1)


def _row_selector(rows, device):
    """A slice for consecutive rows (a view), else an index tensor for ``index_select``."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return torch.tensor(rows, dtype=torch.int64, device=device)


def gram_rows(packed, rows, working_memory):
    """Exact counts ``(len(rows), n)``: rows ``rows`` of the Gram matrix of the bits.

    ``packed`` is a uint8 tensor ``(n, n_bytes)`` on the device that computes,
    ``rows`` an int64 numpy array. Returns an int64 tensor on that device.
    """
    n_images, n_bytes = packed.shape
    int8 = _int8_gemm(packed.device)
    selector = _row_selector(rows, packed.device)
    gram = None
    for columns in _batches(n_bytes, _chunk_step(n_images, int8, working_memory)):
        bits = _unpack(packed[:, columns], int8)
        # index_select: several times faster than advanced indexing of int8 rows
        left = bits[selector] if isinstance(selector, slice) else bits.index_select(0, selector)
        # int32 or float32 sums of at most 2**24 bits: exact, then added in int64
        part = (torch._int_mm(left, bits.T) if int8 else left @ bits.T).to(torch.int64)
        gram = part if gram is None else gram.add_(part)
    if gram is None:  # no units
        gram = torch.zeros((len(rows), n_images), dtype=torch.int64, device=packed.device)
    return gram


def _chunk_step(n_images, int8, working_memory):
    """Bytes of packed columns per chunk: the unpacked chunk within ``working_memory``."""
    step = max(1, working_memory // (8 * (1 if int8 else 4) * max(1, n_images)))
    return step if int8 else min(step, _FLOAT32_EXACT_TERMS // 8)


def gram_matrix(packed, working_memory):
    """The exact ``(n, n)`` Gram matrix of the bits, an int64 tensor on ``packed``'s device.

    One GEMM per chunk of units, not one per block of rows above the diagonal:
    oneDNN packs both int8 operands on every call, so cutting the product
    into triangle blocks saves no time here.
    """
    return gram_rows(packed, np.arange(len(packed)), working_memory)


def pair_plan(pairs, n_images, working_memory):
    """How :func:`pair_counts` reads the pairs: from Gram rows (dense) or row by row.

    A Gram row costs ``n`` row products: with fewer than ``n / 8`` pairs per
    distinct first image the pairs' own rows are cheaper. Dense: the distinct
    first images are taken ``n_rows`` at a time (a ``(n_rows, n)`` int64
    block of Gram rows within ``working_memory``); each block is ``(rows,
    selected, local_rows, columns)``: the pairs ``selected`` are the entries
    ``(local_rows, columns)`` of the Gram rows ``rows``. When the whole
    ``(n, n)`` int64 Gram matrix fits in ``working_memory``, ``flat`` holds
    the pairs' flat indices into it (:func:`gram_matrix`), else None.
    """
    if len(pairs) == 0:
        return PairPlan(pairs, False, [], None)
    firsts = np.unique(pairs[:, 0])
    if 8 * len(pairs) < len(firsts) * n_images:
        return PairPlan(pairs, False, [], None)
    position = np.searchsorted(firsts, pairs[:, 0])
    n_rows = max(1, working_memory // (8 * n_images))
    block = position // n_rows
    order = np.argsort(block, kind="stable")
    bounds = np.searchsorted(block[order], np.arange(len(firsts) // n_rows + 2))
    blocks = []
    for block_index, start in enumerate(range(0, len(firsts), n_rows)):
        selected = order[bounds[block_index] : bounds[block_index + 1]]
        blocks.append((
            firsts[start : start + n_rows], selected, position[selected] - start,
            pairs[selected, 1],
        ))
    full = 8 * n_images * n_images <= working_memory
    flat = pairs[:, 0] * n_images + pairs[:, 1] if full else None
    return PairPlan(pairs, True, blocks, flat)


def pair_counts(packed, plan, device, working_memory, gram=None):
    """``(m,)`` int64 numpy: popcount(``packed[i] & packed[j]``) for each pair of the plan.

    Dense plans multiply on ``device``; the row-by-row way runs in numpy.
    ``gram``: the :func:`gram_matrix` of ``packed`` if already computed.
    """
    pairs = plan.pairs
    counts = np.zeros(len(pairs), dtype=np.int64)
    if len(pairs) == 0:
        return counts
    if not plan.dense:
        n_pairs = max(1, working_memory // (2 * max(1, packed.shape[1])))
        for chunk in _batches(len(pairs), n_pairs):
            shared = packed[pairs[chunk, 0]] & packed[pairs[chunk, 1]]
            counts[chunk] = _popcount(shared).sum(axis=1, dtype=np.int64)
        return counts
    tensor = to_device(packed, device)
    if plan.flat is not None:
        if gram is None:
            gram = gram_matrix(tensor, working_memory)
        return gram.view(-1).take(torch.from_numpy(plan.flat).to(device)).cpu().numpy()
    for rows, selected, local_rows, columns in plan.blocks:
        gram = gram_rows(tensor, rows, working_memory)
        # the flat index of (local_rows, columns) in the (len(rows), n) block
        flat = torch.from_numpy(local_rows * gram.shape[1] + columns).to(device)
        counts[selected] = gram.view(-1).take(flat).cpu().numpy()
    return counts
