"""The KV cache of a running batch: one buffer per layer, rows right-aligned, copied only when out of room.

Every row's tokens are contiguous and end at the same column (`end`): row i holds columns
`end - lengths[i] .. end`, so a row is described by its length alone and the columns before it are padding
(masked out by length). What each operation costs:
- a decoding step writes its column for every row in place (`write_column`, then `commit_column`);
- a row joins by writing its prompt's keys and values into a free row slot (`add`);
- rows leave by moving the last rows into their slots (`remove`): only the moved rows are copied, and the
  padding columns no row needs any more drop out of the view for free;
- the buffers are reallocated (one copy of the live cache) only when they run out of columns (every
  GROWTH steps), out of row slots (the batch grows), or when rows that leave free more than GROWTH columns on
  the left (a long prompt finished: the rest are compacted instead of keeping its width allocated).
transformers' DynamicCache concatenates at every step and selects rows by copying the whole cache; here a
16-row batch of the default model copies nothing on most steps.

Slots and columns outside a row's span may hold stale keys and values of rows that left: they are finite,
and masked, so they weigh nothing in attention (buffers start as zeros, never as uninitialised memory, whose
NaNs would survive a zero weight).
"""
from __future__ import annotations

import torch

GROWTH = 64  # spare columns allocated at once; rows that leave may free up to this many on the left


class RowCache:
    def __init__(self, layers: int):
        self.layers = layers
        self.keys: list[torch.Tensor] = []  # per layer [row slots, kv heads, columns, head size]
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens held per row, in row order
        self.end = 0  # the column after every row's last token

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return max(self.lengths, default=0)

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def columns(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def allocated_tokens(self) -> int:
        return self.slots * self.columns

    # -- a decoding step ------------------------------------------------------------

    def reserve_column(self) -> None:
        """Before a step's forward: room for one more column, so every layer writes in place."""
        if self.end >= self.columns:
            self._reallocate(self.rows, self.width + 1)

    def write_column(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys and values [rows, kv heads, 1, head size] at column `end`; returns the rows'
        keys and values with it ([rows, kv heads, width + 1, head size] views). Not committed until
        `commit_column`, so a forward that fails midway leaves the cache as it was."""
        rows, start = self.rows, self.end - self.width
        self.keys[layer][:rows, :, self.end] = keys[:, :, 0]
        self.values[layer][:rows, :, self.end] = values[:, :, 0]
        return (self.keys[layer][:rows, :, start:self.end + 1], self.values[layer][:rows, :, start:self.end + 1])

    def column_mask(self) -> torch.Tensor:
        """[rows, 1, 1, width + 1] bool: which columns of `write_column`'s view each row attends to (its own)."""
        width = self.width + 1
        lengths = torch.tensor(self.lengths, device=self.keys[0].device) + 1
        return (torch.arange(width, device=lengths.device) >= width - lengths.unsqueeze(1))[:, None, None, :]

    def commit_column(self) -> None:
        self.end += 1
        self.lengths = [length + 1 for length in self.lengths]

    # -- rows joining and leaving ---------------------------------------------------

    def add(self, prompts: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]]) -> None:
        """New rows: for each prompt, its keys and values (per layer [1, kv heads, tokens, head size]) and how
        many rows hold them. All at once, so the prompts that join in one step cost one reallocation at most
        (16 joining one by one took a fifth of their prefill's time, reallocating the growing cache 16 times)."""
        if not prompts:
            return
        rows = self.rows + sum(copies for _, copies in prompts)
        length = max(states[0][0].shape[2] for states, _ in prompts)
        if not self.keys:
            self._allocate(prompts[0][0][0][0], rows, length)
        elif rows > self.slots or length > self.end:
            self._reallocate(rows, max(self.width, length))
        for states, copies in prompts:
            first, length = self.rows, states[0][0].shape[2]
            for layer, (keys, values) in enumerate(states):
                self.keys[layer][first:first + copies, :, self.end - length:self.end] = keys
                self.values[layer][first:first + copies, :, self.end - length:self.end] = values
            self.lengths += [length] * copies

    def remove(self, keep: list[int]) -> list[int]:
        """Keep only the rows `keep` (ascending indices). Returns their new order: the old index of each row.

        The kept rows past the new end fill the slots of the rows that left, so only they are copied.
        """
        count = len(keep)
        kept = set(keep)
        holes = [index for index in range(count) if index not in kept]
        movers = [index for index in keep if index >= count]
        order = list(range(count))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        if holes:
            device = self.keys[0].device
            to, source = torch.tensor(holes, device=device), torch.tensor(movers, device=device)
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[to] = buffer[source]  # the movers lie beyond the holes: gathered before written
        self.lengths = [self.lengths[index] for index in order]
        if not count:
            self.clear()
        elif self.end - self.width > GROWTH:
            self._reallocate(count, self.width)  # a long row left: do not keep its columns allocated for the rest
        return order

    def rows_of(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' keys and values as they are ([rows, kv heads, width, head size] views)."""
        start = self.end - self.width
        return self.keys[layer][:self.rows, :, start:self.end], self.values[layer][:self.rows, :, start:self.end]

    def clear(self) -> None:
        self.keys, self.values, self.lengths, self.end = [], [], [], 0

    # -- internals ----------------------------------------------------------------------

    def _allocate(self, like: torch.Tensor, rows: int, width: int) -> None:
        shape = (rows, like.shape[1], width + GROWTH, like.shape[3])
        self.keys = [like.new_zeros(shape) for _ in range(self.layers)]
        self.values = [like.new_zeros(shape) for _ in range(self.layers)]
        self.end = width

    def _reallocate(self, rows: int, width: int) -> None:
        """Fresh buffers with `rows` slots and room for `width` columns (+ GROWTH), the live rows copied over,
        right-aligned at the new `end` = width; layer by layer, so the old and new buffers of one layer at a
        time are held together."""
        live, old_width = self.rows, self.width
        for buffers in (self.keys, self.values):
            for layer, old in enumerate(buffers):
                new = old.new_zeros((rows, old.shape[1], width + GROWTH, old.shape[3]))
                new[:live, :, width - old_width:width] = old[:live, :, self.end - old_width:self.end]
                buffers[layer] = new
        self.end = width


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token adds to the cache, from the model's config."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
