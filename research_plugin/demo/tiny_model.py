"""A tiny Qwen2 policy with a tokenizer trained locally: nothing is downloaded.

Used by the tests and the CPU demo. The tokenizer is a byte-level BPE trained on the bundled corpus, the
generated fact world (:mod:`research_plugin.demo.fact_world`), the prompts and every dialect's tags (tags are
ordinary text, as in real models, so a decode with ``skip_special_tokens=True`` keeps them); it carries a ChatML
chat template. The model is randomly initialised from a small config and saved with ``save_pretrained``, so verl
loads it like any HF model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..core.dialects import DIALECTS
from ..core.prompts import base_prompt, system_prompt
from ..data import two_hop_corpus_path, two_hop_questions_path
from .fact_world import PracticeWorld, bundled_world

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> list[str]:
    texts = []
    for path in (two_hop_corpus_path(), two_hop_questions_path()):
        if path.exists():
            texts += [json.dumps(json.loads(line), ensure_ascii=False) for line in path.open(encoding="utf-8")]
    for d in DIALECTS.values():
        tags = [d.query_open, d.query_close, d.result_open, d.result_close, d.answer_open, d.answer_close]
        texts += [" ".join(tags)] * 50 + [system_prompt(d), base_prompt("Who founded it?", d)] * 5
        texts += [f"{d.think_open} reasoning {d.think_close} {d.query_open} query {d.query_close}"] * 50
    texts += ["\\boxed{answer} Doc 1 (Title: X) text"] * 50
    # the generated fact world and practice facts over its kind of invented names (demo.fact_world)
    world = bundled_world()
    texts += [f"{f.question} {f.sentence}" for f in world]
    practice = PracticeWorld(seed=-1)
    texts += [f"{f.question} {f.sentence}" for f in (practice.fact() for _ in range(4000))]
    return texts


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out_dir)
    return hf


def build_tiny_model(out_dir: str | os.PathLike, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random Qwen2 causal LM and its tokenizer to ``out_dir`` (atomically); return the path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tokenizer = build_tokenizer(tmp)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        # head_dim 32: vLLM's CPU attention kernels take head sizes 32, 64, 80, ... (not 16)
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its copy is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
