"""Tiny models for unit tests: seconds to build, with the structures the engine must handle."""

from __future__ import annotations

import torch
from torch import nn


class TinyResNet(nn.Module):
    """conv-BN-ReLU, a residual block, then a linear head: the residual couples channels."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.b2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.head(x.mean((2, 3)))


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    # Non-trivial BatchNorm statistics, as a trained model would have.
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 3, 8, 8))
    return model.eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def bert_batch(n: int = 4, length: int = 10) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}
