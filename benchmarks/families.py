"""Ten Hugging Face families, trained here briefly, compressed for the CPU with no settings.

    python -m benchmarks.families [--families bert,vit,...] [--train-seconds 60]
                                  [--profile cpu] [--readme]

Each family is a small configuration built from its ``transformers`` config class (random
init, no download), trained here for at most ``--train-seconds`` on data that ships offline:

- image models (vit, convnext, mobilenet_v2, swin, resnet): scikit-learn digits, upsampled to
  32x32 RGB, as 10-class classifiers; compressed against the held-out digits' labels (accuracy);
- text encoders (bert, roberta, distilbert): masked-language-model training on the standard
  library's prose (``pydoc_data.topics``) with a word-level tokenizer built from it; the encoder
  is compressed for embedding fidelity (cosine + neighbour recall) on held-out sentences;
- causal LMs (gpt2, llama with grouped-query attention): next-token training on the same prose;
  compressed against the perplexity ratio to the original on held-out sentences.

Then ``compress(model, profile)`` with the profile as shipped: MACs and params reduction, the
speed-up measured by the engine (original and variant timed back to back), metric before/after,
seconds. Writes benchmarks/results/families.json and .md; with --readme, the README block.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import torch
from torch import nn

from benchmarks.common import describe_machine, finish, machine, stamp, table
from compression import compress
from compression.profiles import get_profile

IMAGE = ("vit", "convnext", "mobilenet_v2", "swin", "resnet")
ENCODERS = ("bert", "roberta", "distilbert")
CAUSAL = ("gpt2", "llama")
FAMILIES = (*ENCODERS, "vit", *CAUSAL, "convnext", "mobilenet_v2", "swin", "resnet")
VOCAB, LENGTH = 2000, 32


# ---- data ---------------------------------------------------------------------------------


def digits_rgb() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from service.models.digits import digits_split

    x_tr, y_tr, x_te, y_te = digits_split()

    def up(x):
        return nn.functional.interpolate(x, size=32, mode="bilinear").repeat(1, 3, 1, 1)

    return up(x_tr), y_tr, up(x_te), y_te


class WordTokens:
    """A word-level tokenizer over the standard library's prose (ids 0 pad, 1 unk, 2 mask)."""

    def __init__(self, sentences: list[str]) -> None:
        counts = collections.Counter(w for s in sentences for w in self.words(s))
        self.vocab = {w: i + 3 for i, (w, _) in enumerate(counts.most_common(VOCAB - 3))}

    @staticmethod
    def words(sentence: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", sentence.lower())

    def __call__(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(sentences), LENGTH, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sentences):
            tokens = [self.vocab.get(w, 1) for w in self.words(s)][:LENGTH]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# ---- models -------------------------------------------------------------------------------


def build(family: str) -> nn.Module:
    """The family's small trainable model (classifier, masked LM or causal LM)."""
    import transformers as t

    torch.manual_seed(0)
    text = {"vocab_size": VOCAB, "max_position_embeddings": 64, "pad_token_id": 0}
    enc = {"num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}
    if family == "bert":
        return t.BertForMaskedLM(t.BertConfig(hidden_size=128, **enc, **text))
    if family == "roberta":
        text = text | {"max_position_embeddings": 66, "bos_token_id": 3, "eos_token_id": 4}
        return t.RobertaForMaskedLM(t.RobertaConfig(hidden_size=128, **enc, **text))
    if family == "distilbert":
        c = t.DistilBertConfig(dim=128, n_layers=4, n_heads=4, hidden_dim=512, **text)
        return t.DistilBertForMaskedLM(c)
    if family == "gpt2":
        c = t.GPT2Config(vocab_size=VOCAB, n_embd=128, n_layer=4, n_head=4, n_positions=64)
        return t.GPT2LMHeadModel(c)
    if family == "llama":
        c = t.LlamaConfig(hidden_size=128, num_key_value_heads=2, **enc, **text)
        return t.LlamaForCausalLM(c)
    image = {"num_labels": 10}
    if family == "vit":
        c = t.ViTConfig(image_size=32, patch_size=4, hidden_size=128, **enc, **image)
        return t.ViTForImageClassification(c)
    if family == "convnext":
        c = t.ConvNextConfig(num_stages=3, hidden_sizes=[32, 64, 128], depths=[2, 2, 2], **image)
        return t.ConvNextForImageClassification(c)
    if family == "mobilenet_v2":
        c = t.MobileNetV2Config(image_size=32, depth_multiplier=0.5, **image)
        return t.MobileNetV2ForImageClassification(c)
    if family == "swin":
        c = t.SwinConfig(
            image_size=32,
            patch_size=2,
            embed_dim=48,
            depths=[2, 2],
            num_heads=[3, 6],
            window_size=4,
            **image,
        )
        return t.SwinForImageClassification(c)
    if family == "resnet":
        c = t.ResNetConfig(
            embedding_size=32,
            hidden_sizes=[32, 64, 128],
            depths=[1, 1, 1],
            layer_type="basic",
            **image,
        )
        return t.ResNetForImageClassification(c)
    raise KeyError(family)


def _loss(family: str, model: nn.Module, batch) -> torch.Tensor:
    if family in IMAGE:
        x, y = batch
        return nn.functional.cross_entropy(model(x).logits, y)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if family in CAUSAL:
        labels = ids.masked_fill(mask == 0, -100)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    picked = (torch.rand(ids.shape) < 0.15) & (mask > 0)  # masked-language-model objective
    labels = ids.masked_fill(~picked, -100)
    return model(input_ids=ids.masked_fill(picked, 2), attention_mask=mask, labels=labels).loss


def train(family: str, model: nn.Module, data, seconds: float) -> dict:
    """Adam on ``data`` (batches) for at most ``seconds``; returns steps and the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start, steps, loss = time.monotonic(), 0, float("nan")
    while time.monotonic() - start < seconds:
        batch = data[steps % len(data)]
        out = _loss(family, model, batch)
        opt.zero_grad()
        out.backward()
        opt.step()
        steps, loss = steps + 1, out.item()
    model.eval()
    return {"steps": steps, "loss": round(loss, 4), "seconds": round(time.monotonic() - start, 1)}


# ---- one family ---------------------------------------------------------------------------


def run_family(family: str, profile_name: str, seconds: float) -> dict:
    torch.manual_seed(0)
    model = build(family)
    if family in IMAGE:
        x_tr, y_tr, x_te, y_te = digits_rgb()
        data = list(zip(x_tr.split(64), y_tr.split(64), strict=True))
        trained = train(family, model, data, seconds)
        kwargs = {
            "example_inputs": x_te[:8],
            "calibration": list(x_tr.split(128)),
            "validation": list(zip(x_te.split(128), y_te.split(128), strict=True)),
        }
    else:
        from service.models.text import sentence_split

        calibration, validation = sentence_split()
        tokens = WordTokens(calibration)
        data = [tokens(calibration[i : i + 32]) for i in range(0, len(calibration), 32)]
        trained = train(family, model, data, seconds)
        if family in ENCODERS:
            model = model.base_model  # compress the encoder; its embeddings are what is served
        kwargs = {
            "example_inputs": tokens(validation[:8]),
            "calibration": data,
            "validation": [(tokens(validation[i : i + 64]), None) for i in range(0, 256, 64)],
        }
    t0 = time.perf_counter()
    variant = compress(model, profile_name, source=family, **kwargs)
    r = variant.report
    return {
        "family": family,
        "model": type(model).__name__,
        "training": trained,
        "accepted": r.accepted,
        "reason": r.reason,
        "macs_x": round(r.macs_reduction, 2),
        "params_x": round(r.params_reduction, 2),
        "speedup": r.speedup,
        "metric": r.metric,
        "metric_before": r.metric_before,
        "metric_after": r.metric_after,
        "neighbour_recall": r.neighbour_recall,
        "precision": r.precision,
        "ratio": r.ratio,
        "allocation": r.allocation,
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": r.steps,
    }


def markdown(result: dict) -> str:
    rows = [
        [
            r["family"],
            r["model"],
            "yes" if r["accepted"] else "no",
            f"{r['macs_x']:.2f}x",
            f"{r['params_x']:.2f}x",
            f"{r['speedup']:.2f}x",
            f"{r['metric']} {r['metric_before']:.4f} -> {r['metric_after']:.4f}",
            f"{r['ratio']:.0%} {r['allocation']}, {r['precision']}",
            f"{r['seconds']:.0f}",
        ]
        for r in result["families"]
    ]
    header = ["family", "model", "accepted", "MACs", "params", "speed-up", "metric", "chosen", "s"]
    lines = [
        f"Ten families trained here for at most {result['train_seconds']:g} s each, compressed "
        f"with the `{result['profile']}` profile as shipped ({stamp()}; "
        f"{describe_machine(result['machine'])}). `python -m benchmarks.families --readme`",
        "",
        *table(header, rows),
        "",
        "Metrics: accuracy on held-out digits (image models); cosine fidelity of the encoder's "
        "embeddings (text encoders); perplexity ratio, the original's over the variant's (causal "
        "LMs, budget +5%). A rejected row keeps serving the original; its reason is in the JSON.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    get_profile(args.profile)  # a bad name fails before any training
    result = {
        "machine": machine(),
        "profile": args.profile,
        "train_seconds": args.train_seconds,
        "families": [],
    }
    for family in args.families.split(","):
        print(f"{family}: training and compressing ...", flush=True)
        result["families"].append(run_family(family, args.profile, args.train_seconds))
        print({k: v for k, v in result["families"][-1].items() if k != "steps"}, flush=True)
    text = markdown(result)
    finish("families", result, text, readme=text if args.readme else None)


if __name__ == "__main__":
    main()
