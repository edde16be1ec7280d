"""BOS-prepended best-fit packing of one shard's documents into training rows.

A shard stores its documents back to back, each starting with BOS, and an
offsets array [num_docs + 1] of document starts. Packing cuts the shard into
rows of exactly `row_length` (T + 1) tokens with no padding. The result lists,
per row, the shard-relative (start, length) segments whose concatenation is
the row.

Rules (deterministic: they depend only on the document lengths):
  * A buffer holds up to `buffer_docs` whole documents, taken from the shard in
    order, plus continuation pieces. It is topped up before every row.
  * A continuation is the remainder of a cropped piece. It has no BOS of its
    own and carries on its document's text wherever it is placed.
  * A row opens with a whole document, so it starts with that document's BOS.
    While fewer than `row_length` continuation tokens are buffered and a
    document longer than a row is buffered, the shortest such document opens
    the row (cropped to it). Otherwise the longest document that fits opens
    it, or, if none fits, the shortest document, cropped.
  * The row is then filled with continuations first: the longest one that
    fits, else the shortest one cropped to the space left. Only with no
    continuation buffered: the longest whole document that fits, else the
    shortest one, cropped. A cropped remainder goes back into the buffer as a
    continuation.
  * Ties between pieces of equal length go to the piece that entered the
    buffer first.
Every row needs a whole document to open it, so whole documents are saved
for that while continuation text waits. Documents longer than a row are opened
only as fast as the continuation text they leave behind is used up. Without
these two preferences, long documents pile up in the buffer until the shard
ends, and much of their text is left with no document to open a row.

A shard whose documents average more than a row has more rows of text than
documents to open them. So once the shard has no documents left and no whole
document is buffered, the remaining continuations open rows behind a
synthetic BOS (segment start -1, length 1) when `synthetic_bos` is True. With
`synthetic_bos` False they are dropped and counted as orphan tokens instead.
Packing ends when fewer tokens are left than the next row needs (`row_length`,
or `row_length - 1` behind a synthetic BOS). Those are dropped as the tail,
so with synthetic BOS rows a shard loses fewer than `row_length` tokens.
Every token of the shard lies in exactly one row segment or dropped piece.
"""

import bisect
import dataclasses

import numpy as np

# Whole documents in the packing buffer; the reference loader also buffers 1,000.
DEFAULT_BUFFER_DOCS = 1000
# Segment start that marks one synthetic BOS token instead of shard tokens.
SYNTHETIC_BOS_START = -1
# Buffer keys pack (length, arrival) into one int: length << 32 | (MASK - arrival).
# A larger key is a longer piece, or an earlier piece of the same length.
_ARRIVAL_BITS = 32
_ARRIVAL_MASK = (1 << _ARRIVAL_BITS) - 1


@dataclasses.dataclass(frozen=True, eq=False)
class PackedShard:
  """Rows of one shard in compressed sparse row form, plus the dropped pieces.

  Row r is the concatenation of tokens[seg_start[s] : seg_start[s] + seg_len[s]]
  for s in row_ptr[r] .. row_ptr[r + 1] - 1, in that order. A segment with
  start SYNTHETIC_BOS_START is one BOS token that is not in the shard.
  """

  row_length: int  # tokens per row, T + 1
  row_ptr: np.ndarray  # int64 [rows + 1], first segment of each row
  seg_start: np.ndarray  # int64 [segments], shard-relative token start
  seg_len: np.ndarray  # int64 [segments], tokens in the segment
  dropped_start: np.ndarray  # int64 [pieces], starts of the pieces left out, sorted
  dropped_len: np.ndarray  # int64 [pieces]
  orphan_tokens: int  # dropped continuation tokens that had no document to open a row

  @property
  def num_rows(self) -> int:
    return len(self.row_ptr) - 1

  @property
  def dropped_tokens(self) -> int:
    return int(self.dropped_len.sum())

  @property
  def synthetic_bos_rows(self) -> int:
    return int(np.count_nonzero(self.seg_start == SYNTHETIC_BOS_START))


def _key_length(key: int) -> int:
  return key >> _ARRIVAL_BITS


def _longest_fitting(keys: list[int], limit: int) -> int:
  """Return the index of the earliest of the longest pieces <= limit, or -1."""
  return bisect.bisect_right(keys, (limit << _ARRIVAL_BITS) | _ARRIVAL_MASK) - 1


def _first_shortest(keys: list[int], minimum: int = 0) -> int:
  """Return the index of the earliest of the shortest pieces > minimum (keys must have one)."""
  above = bisect.bisect_right(keys, (minimum << _ARRIVAL_BITS) | _ARRIVAL_MASK)
  return _longest_fitting(keys, _key_length(keys[above]))


class _PieceBuffer:
  """Buffered pieces in two sorted key lists: whole documents and continuations."""

  def __init__(self):
    self.docs: list[int] = []
    self.continuations: list[int] = []
    self.starts: dict[int, int] = {}  # arrival number -> shard-relative start
    self.tokens = 0
    self.continuation_tokens = 0
    self._arrivals = 0

  def add(self, start: int, length: int, is_doc: bool) -> None:
    arrival = self._arrivals
    if arrival > _ARRIVAL_MASK:
      raise ValueError(f"A shard produced more than {_ARRIVAL_MASK} pieces; write smaller shards.")
    self._arrivals += 1
    self.starts[arrival] = start
    self.tokens += length
    if not is_doc:
      self.continuation_tokens += length
    key = (length << _ARRIVAL_BITS) | (_ARRIVAL_MASK - arrival)
    bisect.insort(self.docs if is_doc else self.continuations, key)

  def pop(self, keys: list[int], index: int) -> tuple[int, int, bool]:
    """Remove keys[index] and return its (start, length, is_doc)."""
    key = keys.pop(index)
    length = _key_length(key)
    self.tokens -= length
    if keys is self.continuations:
      self.continuation_tokens -= length
    return self.starts.pop(_ARRIVAL_MASK - (key & _ARRIVAL_MASK)), length, keys is self.docs

  def pop_opener(self, row_length: int) -> tuple[int, int, bool]:
    """Remove the whole document that opens the next row (rules in the module docstring)."""
    docs = self.docs
    fitting = _longest_fitting(docs, row_length)
    has_long = fitting < len(docs) - 1
    if has_long and (fitting < 0 or self.continuation_tokens < row_length):
      return self.pop(docs, _first_shortest(docs, minimum=row_length))
    return self.pop(docs, fitting)

  def pop_filler(self, space: int) -> tuple[int, int, bool]:
    """Remove the piece that fills the space left in a row, continuations first."""
    keys = self.continuations or self.docs
    index = _longest_fitting(keys, space)
    return self.pop(keys, index if index >= 0 else _first_shortest(keys))


def _fill_row(buffer: _PieceBuffer, row_length: int, starts: list[int], lengths: list[int]) -> None:
  """Append the segments of one full row, re-buffering the remainder of a cropped piece."""
  if buffer.docs:
    space = row_length
    start, length, _ = buffer.pop_opener(row_length)
  else:
    starts.append(SYNTHETIC_BOS_START)
    lengths.append(1)
    space = row_length - 1
    start, length, _ = buffer.pop_filler(space)
  while True:
    placed = min(length, space)
    starts.append(start)
    lengths.append(placed)
    if placed < length:
      buffer.add(start + placed, length - placed, is_doc=False)
    space -= placed
    if space == 0:
      return
    start, length, _ = buffer.pop_filler(space)


def validate_offsets(offsets) -> np.ndarray:
  """Check document offsets and return them as int64 [num_docs + 1].

  Offsets must be a 1-D integer array that starts at 0 and strictly
  increases, so every document has at least its BOS token.
  """
  offsets = np.asarray(offsets)
  if offsets.ndim != 1 or offsets.shape[0] < 1 or not np.issubdtype(offsets.dtype, np.integer):
    raise ValueError(
        f"offsets has shape {offsets.shape} and dtype {offsets.dtype}; expected 1-D integer "
        "[num_docs + 1] document starts ending with the token count.")
  offsets = offsets.astype(np.int64)
  if offsets[0] != 0:
    raise ValueError(f"offsets start at {offsets[0]}; the first document must start at 0.")
  lengths = np.diff(offsets)
  if lengths.size and lengths.min() < 1:
    bad = int(np.argmin(lengths))
    raise ValueError(
        f"document {bad} has length {lengths[bad]}; every document needs at least its BOS "
        "token, so offsets must strictly increase.")
  return offsets


def pack_shard(offsets: np.ndarray, row_length: int, *, buffer_docs: int = DEFAULT_BUFFER_DOCS,
               synthetic_bos: bool = True) -> PackedShard:
  """Pack the documents given by `offsets` into rows of `row_length` tokens.

  Only document lengths are read, so packing never touches the token file.
  See the module docstring for the rules.
  """
  if row_length < 2:
    raise ValueError(f"row_length={row_length} must be at least 2 (sequence length T + 1).")
  if buffer_docs < 1:
    raise ValueError(f"buffer_docs={buffer_docs} must be at least 1.")
  offsets = validate_offsets(offsets)
  doc_starts = offsets[:-1].tolist()
  doc_lengths = np.diff(offsets).tolist()
  buffer = _PieceBuffer()
  starts, lengths, row_ptr = [], [], [0]
  next_doc = 0
  while True:
    while next_doc < len(doc_starts) and (len(buffer.docs) < buffer_docs or buffer.tokens < row_length):
      buffer.add(doc_starts[next_doc], doc_lengths[next_doc], is_doc=True)
      next_doc += 1
    # After the loop above, a row that cannot be filled means the shard has no documents left.
    can_open = buffer.docs and buffer.tokens >= row_length
    can_open_synthetic = synthetic_bos and not buffer.docs and buffer.tokens >= row_length - 1
    if not (can_open or can_open_synthetic):
      break
    _fill_row(buffer, row_length, starts, lengths)
    row_ptr.append(len(starts))
  return _finish(buffer, row_length, row_ptr, starts, lengths)


def _finish(buffer: _PieceBuffer, row_length: int, row_ptr: list[int],
            starts: list[int], lengths: list[int]) -> PackedShard:
  """Build the PackedShard and collect what is left in the buffer as dropped pieces."""
  left = sorted(buffer.pop(keys, -1) for keys in (buffer.docs, buffer.continuations)
                for _ in range(len(keys)))
  left_tokens = sum(length for _, length, _ in left)
  # Without a document left, continuations of at least a row are orphans, not a tail.
  orphans = left_tokens if left_tokens >= row_length and not any(d for _, _, d in left) else 0
  return PackedShard(
      row_length=row_length,
      row_ptr=np.asarray(row_ptr, dtype=np.int64),
      seg_start=np.asarray(starts, dtype=np.int64),
      seg_len=np.asarray(lengths, dtype=np.int64),
      dropped_start=np.asarray([start for start, _, _ in left], dtype=np.int64),
      dropped_len=np.asarray([length for _, length, _ in left], dtype=np.int64),
      orphan_tokens=int(orphans),
  )


def copy_row(tokens: np.ndarray, packed: PackedShard, row: int, bos_id: int,
             out_R: np.ndarray) -> None:
  """Copy row `row` of one shard into `out_R` [row_length]."""
  column = 0
  for s in range(packed.row_ptr[row], packed.row_ptr[row + 1]):
    start, length = packed.seg_start[s], packed.seg_len[s]
    if start == SYNTHETIC_BOS_START:
      out_R[column] = bos_id
    else:
      out_R[column:column + length] = tokens[start:start + length]
    column += length
