"""``hf:DIR`` for any AutoModel: inputs chosen from the directory's preprocessing files."""

import pytest
import torch

from compression.core.errors import ModelSourceError
from service.models.sources import resolve

pytestmark = pytest.mark.unit

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "are",
    "be",
    "this",
    "by",
    "or",
]


def _save_tokenizer(directory, pad=False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|endoftext|>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "[UNK]"} if pad else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>", **extra
    )
    fast.save_pretrained(directory)
    return len(vocab)


def test_causal_lm_gets_a_pad_token_and_the_perplexity_metric(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = _save_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    bundle = resolve(f"hf:{tmp_path}")
    assert (bundle.metric, bundle.task) == ("perplexity", "generation")
    assert bundle.tokenizer.pad_token == "<|endoftext|>"
    batch = bundle.calibration[0]
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == 32
    with torch.inference_mode():
        logits = bundle.factory()(**batch).logits
    assert logits.shape[-1] == vocab


def test_text_encoder_stays_an_embedding_model(tmp_path):
    from transformers import BertConfig, BertModel

    vocab = _save_tokenizer(tmp_path, pad=True)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(tmp_path)
    bundle = resolve(f"hf:{tmp_path}")
    assert (bundle.metric, bundle.task, bundle.is_text) == ("cosine", "embedding", True)


def test_image_model_takes_pixels_from_its_own_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=7,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    bundle = resolve(f"hf:{tmp_path}")
    assert bundle.example_inputs.shape == (8, 3, 32, 32)
    assert bundle.example_inputs.dtype == torch.float32
    assert bundle.extra["input_shape"] == [3, 32, 32] and bundle.extra["classes"] == 7
    assert (bundle.metric, bundle.task, bundle.is_text) == ("cosine", "classification", False)
    x, labels = bundle.validation[0]
    assert labels is None and x.shape[1:] == (3, 32, 32)


def test_bad_directories_say_what_was_expected(tmp_path):
    with pytest.raises(ModelSourceError, match="expected config.json"):
        resolve(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelSourceError, match=r"cannot tell the model's inputs: expected a tok"):
        resolve(f"hf:{tmp_path}")
