"""Training batches from packed directories (`lmforge pack` output), read through memmaps.

The order of samples is a pure function of (seed, position), so it is the same
on every run, every rank computes it identically, and a checkpoint only has to
record counters to resume exactly:

- Each source (packed dir) is shuffled per epoch with a permutation seeded by
  (seed, source, epoch); when a source runs out it starts a new epoch.
- With several sources, global sample g comes from the source whose share is most
  behind its weight (smooth weighted round-robin): exact proportions, no randomness.
- One optimizer step takes the next G = micro_batch x accumulation x world
  samples; rank r takes its contiguous slice of G and cuts it into micro-batches.
  Ranks therefore read disjoint samples, and the set of samples in a step does not
  depend on how the global batch is split into processes and accumulation.
"""

from __future__ import annotations

import numpy as np

from lmforge.data.indexed import IndexedDataset
from lmforge.data.sampler import SourceMixture, normalise_weights
from lmforge.errors import ArtifactError


def to_batch(rows: list[np.ndarray]) -> dict:
    """Stack equal-length rows into {input_ids, labels} (labels = inputs; the loss shifts)."""
    import torch

    ids = torch.from_numpy(np.stack([np.asarray(r, dtype=np.int64) for r in rows]))
    return {"input_ids": ids, "labels": ids.clone()}


class PackedBatches:
    """This rank's micro-batches over one or more packed train splits (a training.BatchSource)."""

    # Every row is seq_length real tokens with labels = inputs, so every rank's step has the
    # same number of label tokens: the loop needs no collective to normalise the loss.
    uniform_label_counts = True

    def __init__(self, splits: list[IndexedDataset], weights: list[float] | None, *, micro_batch: int,
                 accumulation: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.splits = splits
        self.weights = normalise_weights(weights, len(splits))
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.rank, self.world, self.seed = rank, world, seed
        self.mixture = SourceMixture([len(s) for s in splits], self.weights, seed)  # exact shares, seeded orders
        self._pending: list[dict] = []

    @property
    def samples(self) -> int:
        """Global samples consumed (all ranks)."""
        return sum(self.mixture.taken)

    @property
    def per_source(self) -> list[int]:
        """Samples taken from each source."""
        return list(self.mixture.taken)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world

    def _next_global(self) -> list[tuple[int, int]]:
        """(source, row) for the next global batch, advancing the counters."""
        return [self.mixture.take(self.mixture.smooth_weighted_choice()) for _ in range(self.global_batch)]

    def __iter__(self) -> "PackedBatches":
        return self

    def __next__(self) -> dict:
        if not self._pending:
            picks = self._next_global()
            per_rank = self.micro_batch * self.accumulation
            mine = picks[self.rank * per_rank:(self.rank + 1) * per_rank]
            for start in range(0, per_rank, self.micro_batch):
                rows = [self.splits[s][i] for s, i in mine[start:start + self.micro_batch]]
                self._pending.append(to_batch(rows))
        return self._pending.pop(0)

    def state_dict(self) -> dict:
        if self._pending:
            raise RuntimeError("PackedBatches.state_dict() called in the middle of an optimizer step")
        return {"samples": self.samples, "per_source": list(self.per_source), "seed": self.seed,
                "sources": [len(s) for s in self.splits], "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sources") != [len(s) for s in self.splits]:
            raise ArtifactError(f"the checkpoint's data position was recorded for sources of sizes {state.get('sources')}, "
                                f"but the data given now has {[len(s) for s in self.splits]}: resume with the same --data_dirs")
        self.mixture.taken = [int(c) for c in state["per_source"]]
        self._pending = []

    def epochs(self, steps: int) -> list[float]:
        """Epochs over each source after `steps` optimizer steps (for the start-up figures)."""
        total = steps * self.global_batch
        return [total * w / len(s) for w, s in zip(self.weights, self.splits)]


def eval_batches(val_splits: list[IndexedDataset], *, num_batches: int, micro_batch: int,
                 rank: int = 0, world: int = 1) -> list[dict]:
    """A fixed, deterministic evaluation subset: evenly spaced rows of every val split.

    The subset depends only on the data and `num_batches x micro_batch`, never on the
    seed or the step, so evaluations along a run (and across runs) are comparable.
    Micro-batches are dealt to ranks round-robin; the count is rounded down to a
    multiple of the world size (at least one per rank) so every rank runs the same number.
    """
    val_splits = [v for v in val_splits if v is not None and len(v)]
    if not val_splits or num_batches <= 0:
        return []
    num_batches = max(world, num_batches - num_batches % world)
    wanted = num_batches * micro_batch
    rows: list[np.ndarray] = []
    for k, split in enumerate(val_splits):
        share = wanted // len(val_splits) + (1 if k < wanted % len(val_splits) else 0)
        idx = np.unique(np.linspace(0, len(split) - 1, num=min(share, len(split))).astype(np.int64))
        rows.extend(split[int(i)] for i in idx)
    batches = [to_batch(rows[i:i + micro_batch]) for i in range(0, len(rows), micro_batch)]
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[rank:usable:world]


class Prefetcher:
    """A BatchSource read ahead by a background thread, one optimizer step at a time.

    The thread draws `group` micro-batches (one step) from `source`, pins them (so the
    loop's `.to(device, non_blocking=True)` really overlaps the copy with compute), and
    queues them with the source's position *after* that step. `state_dict()` returns the
    position of the last step handed out, so a checkpoint resumes exactly where the loop
    is, not where the thread has read to.
    """

    def __init__(self, source, group: int, *, pin: bool, depth: int = 2):
        self.source, self.group, self.pin, self.depth = source, group, pin, depth
        self.uniform_label_counts = bool(getattr(source, "uniform_label_counts", False))
        self._current: list[dict] = []
        self._state = source.state_dict()
        self._next_state = self._state
        self._stop = None
        self._thread = None
        self._start()

    def _start(self) -> None:
        import queue
        import threading

        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._run, args=(self._stop, self._queue), daemon=True,
                                        name="lmforge-prefetch")
        self._thread.start()

    def _run(self, stop, out) -> None:
        import queue

        while not stop.is_set():
            try:
                step = [next(self.source) for _ in range(self.group)]
                if self.pin:
                    step = [{k: v.pin_memory() for k, v in b.items()} for b in step]
                item = (step, self.source.state_dict(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                item = (None, None, exc)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict:
        if not self._current:
            step, state, exc = self._queue.get()
            if exc is not None:
                raise exc
            self._current, self._next_state = list(step), state
        batch = self._current.pop(0)
        if not self._current:
            self._state = self._next_state
        return batch

    def state_dict(self) -> dict:
        if self._current:
            raise RuntimeError("Prefetcher.state_dict() called in the middle of an optimizer step")
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.source.load_state_dict(state)
        self._state, self._current = self.source.state_dict(), []
        self._start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
