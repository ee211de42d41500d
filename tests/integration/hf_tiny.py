"""Tiny Hugging Face models of ten families, built from ``transformers`` config classes with
random weights (no download), and inputs for them. ``build(family)`` returns the model and a
function ``batch(n, seed)`` making inputs."""

from __future__ import annotations

import torch

FAMILIES = (
    "bert",
    "roberta",
    "distilbert",
    "vit",
    "gpt2",
    "llama",
    "convnext",
    "mobilenet_v2",
    "swin",
    "resnet",
)
VOCAB = 100


def text_batch(n: int = 8, seed: int = 0, length: int = 12) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded sample
    return {"input_ids": ids, "attention_mask": mask}


def image_batch(n: int = 8, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _config(family: str):
    import transformers as t

    text = {"vocab_size": VOCAB, "max_position_embeddings": 64}
    if family in ("bert", "roberta"):
        cls = t.BertConfig if family == "bert" else t.RobertaConfig
        return cls(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            **text,
        )
    if family == "distilbert":
        return t.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **text)
    if family == "vit":
        return t.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=5,
        )
    if family == "gpt2":
        return t.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "llama":  # grouped-query attention: 4 query heads on 2 key/value heads
        return t.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            **text,
        )
    if family == "convnext":
        return t.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
    if family == "mobilenet_v2":
        return t.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=5)
    if family == "swin":
        return t.SwinConfig(
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
            num_labels=5,
        )
    if family == "resnet":
        return t.ResNetConfig(
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="basic",
            num_labels=5,
        )
    raise KeyError(family)


MODEL_CLASSES = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "distilbert": "DistilBertModel",
    "vit": "ViTForImageClassification",
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "convnext": "ConvNextForImageClassification",
    "mobilenet_v2": "MobileNetV2ForImageClassification",
    "swin": "SwinForImageClassification",
    "resnet": "ResNetForImageClassification",
}


def build(family: str):
    """``(model, batch)``: the family's tiny model in eval mode (seeded) and its input maker."""
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, MODEL_CLASSES[family])(_config(family)).eval()
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model.train()  # BatchNorm statistics of real data, as a trained model would have
        with torch.no_grad():
            for seed in range(3):
                model(image_batch(16, seed=100 + seed))
        model.eval()
    return model, text_batch if family in (
        "bert",
        "roberta",
        "distilbert",
        "gpt2",
        "llama",
    ) else image_batch
