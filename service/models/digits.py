"""Two small classifiers of scikit-learn's 8x8 digits, trained deterministically and cached.

``digits-cnn`` has BatchNorm after every conv and a residual block, so pruning must keep the two
sides of the residual add coupled; ``digits-mlp`` is the 64-128-64-32-10 MLP.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from service.home import builtin_cache

TRAIN_SEED = 0
_EPOCHS = 40


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class DigitsCNN(nn.Module):
    """8x8 grey image -> 10 class scores. Input: float tensor [N, 1, 8, 8] in [0, 1]."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = ResidualBlock(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.block(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class DigitsMLP(nn.Module):
    """64 pixels -> 128 -> 64 -> 32 -> 10 class scores. Input: float tensor [N, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES = {"digits-cnn": DigitsCNN, "digits-mlp": DigitsMLP}


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and held-out test sets: images [N, 1, 8, 8] in [0, 1] and int64 labels.

    A stratified 75/25 split with a fixed seed, so every run sees the same held-out digits.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, data.target, test_size=0.25, random_state=TRAIN_SEED, stratify=data.target
    )
    return (
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te).long(),
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, shift: bool) -> None:
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=_EPOCHS * ((len(x) + 63) // 64)
    )
    model.train()
    for _ in range(_EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            xb = x[idx]
            if shift:  # one-pixel shifts: the CNN generalises better (an MLP does not)
                shifts = tuple(torch.randint(-1, 2, (2,), generator=gen).tolist())
                xb = torch.roll(xb, shifts=shifts, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def cache_dir() -> Path:
    """Where trained built-ins are cached (:func:`service.home.builtin_cache`)."""
    return builtin_cache()


def _arch_key(name: str) -> str:
    import inspect

    src = inspect.getsource(ARCHITECTURES[name]) + inspect.getsource(_train) + str(_EPOCHS)
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def load_digits_model(name: str) -> nn.Module:
    """The trained ``digits-cnn`` or ``digits-mlp``: from the cache, else trained now (seconds)."""
    model = ARCHITECTURES[name]()
    path = cache_dir() / f"{name}-{_arch_key(name)}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(path))
        return model.eval()
    torch.manual_seed(TRAIN_SEED)
    model = ARCHITECTURES[name]()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-for-bit the same weights on every machine
    try:
        x_tr, y_tr, _, _ = digits_split()
        _train(model, x_tr, y_tr, shift=name == "digits-cnn")
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent first uses
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return model.eval()
