"""Models of the output kinds the built-ins lack, trained here, each with data from two sources.

- **A text recogniser** (a CNN, two bidirectional LSTMs, a CTC head; 27 classes per step: the
  blank and a-z): English words from the standard library's help topics, rendered in one font
  to train and verify on, and other words in another font (a source it never saw) to check
  the claims on. Its output is class scores per time step, one answer per image: the decoded
  word.
- **A segmentation net** (a small encoder-decoder with a skip connection; 11 classes per
  pixel: background and the ten digits): handwritten scikit-learn digits pasted on a canvas,
  and font-rendered digits as the other source.

Both are trained deterministically in about a minute each on 2 cores and cached under
``SLIMSERVE_HOME``'s benchmark folder, so a second run starts at once.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.home import slimserve_home

ALPHABET = string.ascii_lowercase  # class 0 is the CTC blank
HEIGHT, WIDTH = 24, 96
CANVAS = 32


def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size)


def _words() -> tuple[list[str], list[str]]:
    """(words to train and verify on, other words): lowercase, 3-8 letters, from the help
    topics (``pydoc_data``), split by topic so the two sets share no topic."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    found = []
    for half in (keys[::2], keys[1::2]):
        words = sorted({w for k in half for w in re.findall(r"\b[a-z]{3,8}\b", topics[k])})
        found.append(words)
    other = sorted(set(found[1]) - set(found[0]))
    return found[0], other


def render_words(words: list[str], font: str, seed: int) -> torch.Tensor:
    """Words as [N, 1, HEIGHT, WIDTH] images in [0, 1]: ink 1, random size, offset and noise."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    fonts = {s: _font(font, s) for s in (15, 16, 17, 18)}
    out = np.zeros((len(words), 1, HEIGHT, WIDTH), dtype=np.float32)
    for i, word in enumerate(words):
        img = Image.new("L", (WIDTH, HEIGHT), 0)
        ImageDraw.Draw(img).text(
            (rng.randint(0, 8), rng.randint(0, 4)),
            word,
            fill=255,
            font=fonts[rng.choice(list(fonts))],
        )
        out[i, 0] = np.asarray(img, dtype=np.float32) / 255.0
    noise = np.random.default_rng(seed).normal(0.0, 0.08, out.shape).astype(np.float32)
    return torch.from_numpy(np.clip(out + noise, 0.0, 1.0))


def encode(word: str) -> list[int]:
    return [ALPHABET.index(c) + 1 for c in word]


def decode(path: torch.Tensor) -> str:
    """Greedy CTC decoding of one argmax path: repeats merged, blanks dropped."""
    out, last = [], 0
    for c in path.tolist():
        if c != last and c != 0:
            out.append(ALPHABET[c - 1])
        last = c
    return "".join(out)


class Recogniser(nn.Module):
    """CNN features per column -> 2 bidirectional LSTMs -> class scores per step ``[B, T, 27]``."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 96),
            nn.MaxPool2d((HEIGHT // 4, 1)),
        )  # fmt: skip
        self.rnn = nn.LSTM(96, 64, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(128, len(ALPHABET) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2).transpose(1, 2)  # [B, T, C]
        return self.head(self.rnn(f)[0])


class Segmenter(nn.Module):
    """Encoder-decoder with a skip connection: class scores per pixel ``[B, 11, H, W]``."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.BatchNorm2d(o), nn.ReLU()
            )

        self.stem = block(1, 24)
        self.down = nn.Sequential(block(24, 48, 2), block(48, 48))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = block(48 + 24, 32)
        self.head = nn.Conv2d(32, 11, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.fuse(torch.cat([self.up(self.down(s)), s], 1)))


def _glyphs_handwritten() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    big = np.kron(d.images / 16.0, np.ones((2, 2)))  # 8x8 -> 16x16
    return big.astype(np.float32), d.target


def _glyphs_font() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageDraw

    glyphs, labels = [], []
    for font in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf"):
        for size in (13, 15, 17):
            f = _font(font, size)
            for digit in range(10):
                img = Image.new("L", (16, 16), 0)
                ImageDraw.Draw(img).text((3, -1), str(digit), fill=255, font=f)
                glyphs.append(np.asarray(img, dtype=np.float32) / 255.0)
                labels.append(digit)
    return np.stack(glyphs), np.array(labels)


def scenes(glyphs: np.ndarray, labels: np.ndarray, n: int, seed: int):
    """``n`` canvases with two glyphs each: (images [n, 1, 32, 32], class maps [n, 32, 32])."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, CANVAS, CANVAS), dtype=np.float32)
    y = np.zeros((n, CANVAS, CANVAS), dtype=np.int64)
    for i in range(n):
        for _ in range(2):
            k = rng.integers(len(glyphs))
            r, c = rng.integers(0, CANVAS - 16, size=2)
            g = glyphs[k]
            x[i, 0, r : r + 16, c : c + 16] = np.maximum(x[i, 0, r : r + 16, c : c + 16], g)
            y[i, r : r + 16, c : c + 16][g > 0.4] = labels[k] + 1
    x += rng.normal(0.0, 0.05, x.shape).astype(np.float32)
    return torch.from_numpy(np.clip(x, 0, 1)), torch.from_numpy(y)


def _cache() -> Path:
    path = slimserve_home() / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def recogniser_data() -> dict:
    """Images and words: ``train``, ``verify`` (the same words and font, other samples),
    ``other_words`` (words from other topics, the same font) and ``other`` (those words in
    another font)."""
    words, other = _words()
    rng = random.Random(0)
    train_words = [rng.choice(words) for _ in range(6000)]
    verify_words = [rng.choice(words) for _ in range(1024)]
    other_words = [random.Random(1).choice(other) for _ in range(512)]
    return {
        "train": (render_words(train_words, "DejaVuSans.ttf", 0), train_words),
        "verify": (render_words(verify_words, "DejaVuSans.ttf", 1), verify_words),
        "other_words": (render_words(other_words, "DejaVuSans.ttf", 3), other_words),
        "other": (render_words(other_words, "DejaVuSerif.ttf", 2), other_words),
    }


def segmenter_data() -> dict:
    """Scenes: ``train`` and ``verify`` of handwritten digits (disjoint glyphs), ``other`` of
    font-rendered digits."""
    g, lab = _glyphs_handwritten()
    half = len(g) // 2
    fg, flab = _glyphs_font()
    return {
        "train": scenes(g[:half], lab[:half], 4000, 0),
        "verify": scenes(g[half:], lab[half:], 1024, 1),
        "other": scenes(fg, flab, 512, 2),
    }


def _train(model: nn.Module, step, batches: int, lr: float) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=batches)
    model.train()
    for i in range(batches):
        loss = step(i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def recogniser(data: dict) -> Recogniser:
    """The trained recogniser (cached)."""
    path = _cache() / "recogniser.pt"
    torch.manual_seed(0)
    model = Recogniser()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    x, words = data["train"]
    targets = [torch.tensor(encode(w)) for w in words]
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def step(i: int) -> torch.Tensor:
        idx = order[(i * 64) % len(x) : (i * 64) % len(x) + 64]
        logp = model(x[idx]).log_softmax(-1).transpose(0, 1)  # [T, B, C]
        tgt = [targets[j] for j in idx.tolist()]
        return ctc(
            logp,
            torch.cat(tgt),
            torch.full((len(idx),), logp.shape[0], dtype=torch.long),
            torch.tensor([len(t) for t in tgt]),
        )

    _train(model, step, 1400, 3e-3)
    torch.save(model.state_dict(), path)
    return model


def segmenter(data: dict) -> Segmenter:
    """The trained segmentation net (cached)."""
    path = _cache() / "segmenter.pt"
    torch.manual_seed(0)
    model = Segmenter()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    x, y = data["train"]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def step(i: int) -> torch.Tensor:
        idx = order[(i * 32) % len(x) : (i * 32) % len(x) + 32]
        return nn.functional.cross_entropy(model(x[idx]), y[idx])

    _train(model, step, 800, 3e-3)
    torch.save(model.state_dict(), path)
    return model


def word_accuracy(model: nn.Module, x: torch.Tensor, words: list[str]) -> float:
    with torch.inference_mode():
        paths = torch.cat([model(b).argmax(-1) for b in x.split(128)])
    return float(np.mean([decode(p) == w for p, w in zip(paths, words, strict=True)]))


def pixel_iou(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean IoU over the 11 classes against the true maps."""
    with torch.inference_mode():
        pred = torch.cat([model(b).argmax(1) for b in x.split(128)])
    ious = []
    for k in range(11):
        a, b = pred == k, y == k
        union = (a | b).sum()
        if union:
            ious.append(float((a & b).sum() / union))
    return float(np.mean(ious))
