"""Small real-valued sequence classification: MNIST-1D and scikit-learn's 8x8 digits.

- MNIST-1D: Greydanus, "Scaling down deep learning", 2020 (Greydanus & Kobak, ICML 2024,
  Sec. 2 and Fig. 1); reference generator greydanus/mnist1d `mnist1d/data.py` and
  `mnist1d/transform.py`. Generated offline: by the `mnist1d` package's own generator when it
  is installed (`pip install seqmem[mnist1d]`; the published benchmark data), else by seqmem's
  port of the same pipeline (vectorised torch; the same distribution, another sample).
- seq_digits: `sklearn.datasets.load_digits` (1,797 images of 8x8 pixels, values 0..16, the
  UCI optical digits test set) read as a sequence, pixel by pixel (length 64) or row by row.

Both are fixed datasets with a train / test split; `sample` draws examples of the chosen split
uniformly with replacement, and `n_examples()` / `batch_at(index)` / `iter_batches(batch_size)`
enumerate the split in order, for one exact pass over it (an exact held-out evaluation). The
class is read out at the last step (10 classes).
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register
from seqmem.tasks.render import check_index, facts

# The ten hand-designed 12-point templates of MNIST-1D (Greydanus 2020, Fig. 1), digits 0..9.
TEMPLATES = [
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
]
# The paper's transform parameters (its `get_dataset_args`).
PADDING = (36, 60)
SCALE_COEFF, MAX_TRANSLATION, SHEAR_SCALE = 0.4, 48, 0.75
CORR_NOISE_SCALE, IID_NOISE_SCALE, CORR_SIGMA = 0.25, 2e-2, 2.0
FINAL_LEN, EPS = 40, 1e-8


def mnist1d_templates() -> Tensor:
    """(10, 12) templates normalised as the paper: zero mean, unit std, shifted to start at 0,
    divided by 6."""
    x = torch.tensor(TEMPLATES, dtype=torch.float64)
    x = (x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True)
    return (x - x[:, :1]) / 6.0


def interp_rows(x: Tensor, n_valid: Tensor, n_out: int) -> Tensor:
    """Linear resampling of the first n_valid[i] samples of each row of x (b, n) onto n_out
    equally spaced points spanning them (np.interp over linspace(0, 1) grids)."""
    pos = torch.linspace(0, 1, n_out, dtype=x.dtype) * (n_valid[:, None] - 1)  # (b, n_out)
    lo = pos.floor().long().clamp(max=x.shape[1] - 1)
    hi = (lo + 1).clamp(max=(n_valid[:, None] - 1))
    w = pos - lo
    return torch.gather(x, 1, lo) * (1 - w) + torch.gather(x, 1, hi) * w  # (b, n_out)


def gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """scipy.ndimage.gaussian_filter1d along dim 1 (mode 'reflect', truncate 4.0)."""
    r = int(4.0 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    # scipy's 'reflect' repeats the edge sample: (d c b a | a b c d | d c b a)
    padded = torch.cat([x[:, :r].flip(1), x, x[:, -r:].flip(1)], dim=1)  # (b, n + 2r)
    return padded.unfold(1, 2 * r + 1, 1) @ k  # (b, n); k is symmetric


def make_mnist1d(n_samples: int = 5000, seed: int = 42, *, shuffle_seq: bool = False,
                 noise: bool = True) -> tuple[Tensor, Tensor]:
    """The MNIST-1D data set (x (n, 40) float32 standardised, y (n,) long), in the paper's
    shuffled order. n_samples // 10 examples per class, each transformed as `transform` of the
    reference: pad with U{36..60} zeros, dilate to 72 samples, scale by 1 + 0.4 (U - 0.5),
    roll by U{0..47}, correlated noise (0.25 N(0,1) smoothed, sigma 2) where the signal is 0,
    iid noise 0.02 N(0,1), shear by 0.75 (U - 0.5) * linspace(-0.5, 0.5), subsample to 40.
    noise=False leaves out scale, roll, both noises and shear (only pad, dilate, subsample)."""
    g = torch.Generator().manual_seed(seed)
    per = n_samples // 10
    y = torch.arange(10).repeat_interleave(per)  # (n,)
    n, T = len(y), 12 + PADDING[1]
    base = torch.zeros(n, T, dtype=torch.float64)  # (n, 72)
    base[:, :12] = mnist1d_templates()[y] + EPS
    pad = PADDING[0] + (torch.rand(n, generator=g, dtype=torch.float64)
                        * (PADDING[1] - PADDING[0] + 1)).long()  # (n,) U{36..60}
    x = interp_rows(base, 12 + pad, T)  # dilate to 72
    if noise:
        x = x * (1 + SCALE_COEFF * (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5))
        k = (torch.rand(n, generator=g, dtype=torch.float64) * MAX_TRANSLATION).long()
        idx = (torch.arange(T) - k[:, None]) % T  # roll right by k
        x = torch.gather(x, 1, idx)
        corr = gaussian_smooth(
            CORR_NOISE_SCALE * torch.randn(n, T, generator=g, dtype=torch.float64), CORR_SIGMA)
        x = torch.where(x != 0, x, corr)
        x = x + IID_NOISE_SCALE * torch.randn(n, T, generator=g, dtype=torch.float64)
        coeff = SHEAR_SCALE * (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5)
        x = x - coeff * torch.linspace(-0.5, 0.5, T, dtype=torch.float64)
    x = interp_rows(x, torch.full((n,), T), FINAL_LEN)  # (n, 40)
    order = torch.randperm(n, generator=g)
    x, y = x[order], y[order]
    if shuffle_seq:
        x = x[:, torch.randperm(FINAL_LEN, generator=g)]
    x = (x - x.mean()) / x.std()
    return x.float(), y


def make_mnist1d_package(n_samples: int = 5000, seed: int = 42, *, shuffle_seq: bool = False
                         ) -> tuple[Tensor, Tensor]:
    """The MNIST-1D data set from the `mnist1d` package's generator, `make_dataset` with its
    default `get_dataset_args()` except num_samples, seed and shuffle_seq (the published data
    set for the defaults 5000, 42, False): x (n, 40) float32 (the package's float64 values,
    rounded), y (n,) long, train then test rows, in the package's order.

    Only the generating path is used (never `get_dataset`, which downloads a pickle). The
    package seeds numpy's and Python's global generators (`set_seed`); their states are
    restored afterwards, so the call leaves no global trace."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = n_samples, seed, shuffle_seq
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]])  # (n, 40)
    y = np.concatenate([data["y"], data["y_test"]])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def mnist1d_package_installed() -> bool:
    """True when the `mnist1d` package can be imported."""
    return importlib.util.find_spec("mnist1d") is not None


MNIST1D_SOURCES = ("auto", "package", "builtin")
LAYOUTS = ("sequence", "grid")  # a grid layout sets the task's `grid = (H, W)`
MNIST1D_GRID = (5, 8)  # 40 samples, row by row
DIGITS_GRID = (8, 8)

_CACHE: dict[tuple, tuple] = {}


def _split_of(key: tuple, build, split: str, n_train: int) -> tuple[Tensor, Tensor]:
    if key not in _CACHE:
        _CACHE[key] = build()
    x, y = _CACHE[key]
    return (x[:n_train], y[:n_train]) if split == "train" else (x[n_train:], y[n_train:])


class _FixedData(Task):
    """A fixed labelled data set with a train / test split, sampled with replacement."""

    fixed_data = True  # continual protocols split / permuted read _data() (x (n, t, d), y (n,))

    def _data(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _meta(self, index: Tensor) -> dict:
        """The batch's facts for the rows `index` of the split."""
        return {"split": self.split, "index": index}

    def _batch(self, index: Tensor) -> Batch:
        x, y = self._data()  # (n, t, d), (n,)
        inputs = x[index]  # (b, t, d)
        b, t = inputs.shape[:2]
        targets = torch.zeros(b, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[:, -1, 0] = y[index]
        mask = torch.zeros(b, t, dtype=torch.bool)  # (b, t)
        mask[:, -1] = True
        return Batch(inputs, targets, mask, {"seq_len": t, **self._meta(index)})

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of examples of the split drawn uniformly with replacement, the class at the
        last step."""
        check_sample_args(self, batch_size, generator)
        n = self.n_examples()
        return self._batch(torch.randint(0, n, (batch_size,), generator=generator))  # (b,)

    def n_examples(self) -> int:
        """The number of examples in this task's split."""
        return len(self._data()[1])

    def batch_at(self, index) -> Batch:
        """The batch of the split's examples at rows `index` (a sequence or 1-D long tensor
        of positions in 0 .. n_examples() - 1), in that order, laid out as `sample`'s."""
        n = self.n_examples()
        index = torch.as_tensor(index, dtype=torch.long)
        if index.ndim != 1 or len(index) == 0 or bool((index < 0).any() | (index >= n).any()):
            raise SeqmemError(f"{self.name}: batch_at takes a non-empty 1-D index of rows in "
                              f"0..{n - 1} of the {self.split} split, got {index.tolist()!r}")
        return self._batch(index)

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """One exact pass over the split in order: batches of rows 0..batch_size-1,
        batch_size.., the last one shorter when batch_size does not divide n_examples()."""
        check_int(f"{self.name}: batch_size", batch_size)
        n = self.n_examples()
        for start in range(0, n, batch_size):
            yield self._batch(torch.arange(start, min(start + batch_size, n)))


@register("mnist1d")
class MNIST1D(_FixedData):
    """MNIST-1D: classify 40-step 1-D signals made from 10 digit templates (Greydanus 2020).

    The paper's data set, generated offline in code: n_samples (5,000) examples, half-way
    transforms of 10 hand-designed templates (padding, dilation, scale, translation, correlated
    and iid noise, shear, subsampling to 40), shuffled, standardised, the first 80 % the train
    split. inputs (b, 40, 1); the class at the last step. meta: {"seq_len", "split",
    "index": (b,) rows of the split, "source": the generator used}.

    source: "package" generates with the `mnist1d` package (`make_mnist1d_package`: the
    published benchmark data for the defaults, values equal to the package's to float32
    rounding; pip install seqmem[mnist1d]); "builtin" with seqmem's port (`make_mnist1d`: the
    random numbers come from a torch.Generator seeded by data_seed, drawn per transform for all
    examples at once, so the data set has the paper's distribution but not its values);
    "auto" (the default) is "package" when the package is installed, else "builtin". The
    attribute `source` holds the generator actually used ("package" or "builtin"), which the
    repr and every batch's meta show. Batches are drawn with replacement; `iter_batches`
    passes over the split once, in order.

    layout "grid" (seqmem's choice, for 2-D mixers) folds the 40 samples row by row into
    `grid = (5, 8)`: 5 rows of 8 consecutive samples, so that the raster order of the cells
    is the signal's own order and a 1-D mixer on the flattened grid reads exactly the
    sequence task. 5 x 8 is the squarest factorisation of 40 (an 8-sample row is a fifth of
    the signal, shorter than a dilated template); a row-causal 2-D mixer then sees, at
    each cell, the earlier rows as the samples 8, 16, ... steps back in its column.

    Args:
        split: "train" (the first 80 %) or "test".
        n_samples: examples generated, both splits.
        data_seed: seed of the data set (42: the published one).
        shuffle_seq: permute the 40 time steps (one fixed permutation), destroying temporal
            order.
        source: "auto", "package" (the mnist1d package) or "builtin" (seqmem's port).
        layout: "sequence" (40 steps) or "grid" (the same 40 steps as a 5 x 8 grid).
    """

    def __init__(self, *, split: str = "train", n_samples: int = 5000, data_seed: int = 42,
                 shuffle_seq: bool = False, source: str = "auto", layout: str = "sequence"):
        self.split = check_choice("split", split, ("train", "test"))
        source = check_choice("source", source, MNIST1D_SOURCES)
        if source == "package" and not mnist1d_package_installed():
            raise SeqmemError("mnist1d: source 'package' needs the mnist1d package, which is not "
                              "installed: pip install seqmem[mnist1d] (or source: builtin)")
        if source == "auto":
            source = "package" if mnist1d_package_installed() else "builtin"
        self.source = source
        self.n_samples = check_int("n_samples", n_samples, low=20)
        self.data_seed = check_int("data_seed", data_seed, low=0)
        if not isinstance(shuffle_seq, bool):
            raise SeqmemError(f"shuffle_seq must be true or false, got {shuffle_seq!r}")
        self.shuffle_seq = shuffle_seq
        self.layout = check_choice("layout", layout, LAYOUTS)
        if self.layout == "grid":
            self.grid = MNIST1D_GRID
        self.d_input = 1
        self.heads = [10]
        self.classes = [str(d) for d in range(10)]

    @classmethod
    def resolve_options(cls, options: dict) -> dict:
        """source "auto" made explicit: "package" if the mnist1d package is installed, else
        "builtin" (so a run's stored config names the generator its data came from)."""
        if options.get("source", "auto") == "auto":
            return {**options, "source": "package" if mnist1d_package_installed() else "builtin"}
        return options

    def _data(self) -> tuple[Tensor, Tensor]:
        key = ("mnist1d", self.source, self.n_samples, self.data_seed, self.shuffle_seq)
        n = self.n_samples // 10 * 10
        make = make_mnist1d_package if self.source == "package" else make_mnist1d
        x, y = _split_of(key, lambda: make(self.n_samples, self.data_seed,
                                           shuffle_seq=self.shuffle_seq),
                         self.split, int(n * 0.8))
        return x[..., None], y  # (n, 40, 1)

    def _meta(self, index: Tensor) -> dict:
        return {**super()._meta(index), "source": self.source}


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: images (1797, 8, 8) float 0..16 and labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


@register("seq_digits")
class SeqDigits(_FixedData):
    """Sequential 8x8 digits: classify scikit-learn's digit images read pixel by pixel.

    `sklearn.datasets.load_digits` (1,797 images, pixels 0..16 scaled to [0, 1]), read in
    raster order: by="pixel" gives inputs (b, 64, 1), by="row" (b, 8, 8). Fixed split: a
    permutation of the images by numpy's default_rng(split_seed) (0), the last
    ceil(test_fraction * 1797) (20 %: 360) the test split. The class at the last step.
    meta: {"seq_len", "split", "index": (b,) rows of load_digits()}.
    layout "grid" keeps the pixel-by-pixel inputs (b, 64, 1) and sets `grid = (8, 8)`, the
    image itself, for 2-D mixers (a 1-D mixer reads it as by="pixel"); it needs by="pixel".
    Needs scikit-learn: pip install seqmem[data].

    Args:
        split: "train" or "test".
        by: "pixel" (64 steps of 1) or "row" (8 steps of 8).
        split_seed: seed of the fixed train/test permutation.
        test_fraction: fraction of the images in the test split.
        layout: "sequence" or "grid" (the 8 x 8 image as a grid of 64 cells; by="pixel").
    """

    def __init__(self, *, split: str = "train", by: str = "pixel", split_seed: int = 0,
                 test_fraction: float = 0.2, layout: str = "sequence"):
        if importlib.util.find_spec("sklearn") is None:
            raise SeqmemError("seq_digits needs scikit-learn, which is not installed: "
                              "pip install seqmem[data]")
        self.split = check_choice("split", split, ("train", "test"))
        self.by = check_choice("by", by, ("pixel", "row"))
        self.split_seed = check_int("split_seed", split_seed, low=0)
        if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
                or not 0 < test_fraction < 1):
            raise SeqmemError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        self.test_fraction = float(test_fraction)
        self.layout = check_choice("layout", layout, LAYOUTS)
        if self.layout == "grid":
            if self.by != "pixel":
                raise SeqmemError(f"seq_digits: layout 'grid' reads the image pixel by pixel "
                                  f"(by: pixel), got by={by!r}")
            self.grid = DIGITS_GRID
        self.d_input = 1 if by == "pixel" else 8
        self.heads = [10]
        self.classes = [str(d) for d in range(10)]

    def split_rows(self, n: int) -> np.ndarray:
        """Rows of load_digits() in this task's split, in the fixed permuted order."""
        order = np.random.default_rng(self.split_seed).permutation(n)
        n_test = math.ceil(self.test_fraction * n)  # as scikit-learn's train_test_split
        return order[: n - n_test] if self.split == "train" else order[n - n_test:]

    def _dataset(self) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, rows) of the split; rows are the images' indices in load_digits()."""
        key = ("seq_digits", self.split_seed, self.test_fraction, self.split, self.by)
        if key not in _CACHE:
            images, labels = load_sklearn_digits()
            rows = self.split_rows(len(labels))
            x = torch.tensor(images[rows] / 16.0, dtype=torch.float32)  # (n, 8, 8)
            x = x.reshape(len(rows), 64, 1) if self.by == "pixel" else x
            _CACHE[key] = (x, torch.tensor(labels[rows], dtype=torch.long), torch.tensor(rows))
        return _CACHE[key]

    def _data(self) -> tuple[Tensor, Tensor]:
        return self._dataset()[:2]

    def render(self, batch: Batch, i: int) -> str:
        """Example i as an 8x8 character image (darker = higher), its class marked `[->c]`."""

        check_index(batch, i)
        shades = " .:-=+*#%@"
        img = batch.inputs[i].reshape(8, 8).tolist()
        rows = ["".join(shades[min(int(v * 10), 9)] * 2 for v in row) for row in img]
        rows[-1] += f"[->{self.classes[int(batch.targets[i, -1, 0])]}]"
        return "\n".join([*rows, facts(batch, i)])

    def _meta(self, index: Tensor) -> dict:
        """meta["index"] are the images' rows in load_digits()."""
        return {**super()._meta(index), "index": self._dataset()[2][index]}
