"""Build tiny Qwen3 models a real vLLM can serve on CPU, offline, in seconds.

    python -m backends.vllm.tiny DIR              # random weights ("tiny")
    python -m backends.vllm.tiny DIR --scripted   # deterministic reply ("scripted")

Run it with the vLLM interpreter (.venv-vllm): torch, transformers and tokenizers live
only there, which is why they are imported inside the functions.

Both share a byte-level BPE tokenizer trained on the local Python standard library and
a Qwen-style chat template (chat_template.jinja) with tools. As in Qwen3, the chat-control
tokens are special (dropped by skip_special_tokens) while <think>/<tool_call> tags are
added but not special, so they survive detokenization and vLLM's qwen3 reasoning parser
and hermes tool parser can see them.

The scripted model is a bigram machine: every attention and MLP output projection is
zero, so the residual stream is the current token's embedding and the next token is a
fixed function of the current one. With the qwen3 and hermes parsers, any chat prompt
(both thinking modes end in the same "\\n" token) yields reasoning SCRIPT_REASONING,
content SCRIPT_CONTENT and one get_weather call; any token off the chain maps to
<|im_end|>.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
VOCAB = 2048
HIDDEN = 128
# vLLM's CPU attention supports head sizes 32, 64, 80, ...; 16 fails at start-up.
HEAD_DIM = 32
MAX_LEN = 2048
TRAINING_FILES = 200

SCRIPT_REASONING = "Let me check the weather."
SCRIPT_CONTENT = "Checking."
SCRIPT_CALL = '\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
EXPECTED_SCRIPT = (
    f"<think>{SCRIPT_REASONING}</think>{SCRIPT_CONTENT}<tool_call>{SCRIPT_CALL}</tool_call>"
)
TEMPLATE = Path(__file__).with_name("chat_template.jinja")


def train_tokenizer() -> Any:
    """A Qwen-flavoured HF fast tokenizer trained on local stdlib sources."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))[:TRAINING_FILES]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=VOCAB - len(CONTROL) - len(TAGS),
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    tok.add_special_tokens(list(CONTROL))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=MAX_LEN,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = TEMPLATE.read_text(encoding="utf-8")
    return hf


def qwen3_config(tok: Any, *, tie_embeddings: bool) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_LEN,
        rope_theta=10000.0,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )


def save(model: Any, tok: Any, out: Path) -> None:
    from transformers import GenerationConfig

    cfg = model.config
    tok.save_pretrained(out)
    model.save_pretrained(out)
    GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=[cfg.eos_token_id, cfg.pad_token_id],
        pad_token_id=cfg.pad_token_id,
    ).save_pretrained(out)


def build_random(out: Path) -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    tok = train_tokenizer()
    torch.manual_seed(0)
    save(Qwen3ForCausalLM(qwen3_config(tok, tie_embeddings=True)), tok, out)


def build_scripted(out: Path) -> None:
    from tokenizers import AddedToken
    from transformers import Qwen3ForCausalLM

    tok = train_tokenizer()
    # Each scripted phrase is one token, so the chain has one link per phrase.
    phrases = (SCRIPT_REASONING, SCRIPT_CONTENT, SCRIPT_CALL)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in phrases])
    model = Qwen3ForCausalLM(qwen3_config(tok, tie_embeddings=False))
    _make_bigram(model, tok, _script_chain(tok))
    check_scripted(model, tok)
    save(model, tok, out)


def _script_chain(tok: Any) -> list[tuple[int, int]]:
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1, newline
    steps = [
        "<think>", SCRIPT_REASONING, "</think>", SCRIPT_CONTENT,
        "<tool_call>", SCRIPT_CALL, "</tool_call>", "<|im_end|>",
    ]  # fmt: skip
    ids = [newline[0], *(tok.convert_tokens_to_ids(s) for s in steps)]
    return list(itertools.pairwise(ids))


def _make_bigram(model: Any, tok: Any, chain: list[tuple[int, int]]) -> None:
    import torch

    vocab, hidden = len(tok), model.config.hidden_size
    end = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    with torch.no_grad():
        emb = torch.randn(vocab, hidden)
        emb[:, 0] = 3.0  # a component shared by all tokens: the road to <|im_end|>
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        eps = model.config.rms_norm_eps
        normed = emb / torch.sqrt((emb * emb).mean(-1, keepdim=True) + eps)
        head = torch.zeros(vocab, hidden)
        for current, following in chain:
            v = normed[current].clone()
            v[0] = 0.0  # orthogonal to the shared component
            head[following] += 30.0 * v / (v @ normed[current])
        head[end, 0] += 10.0 / normed[:, 0].mean()
        model.lm_head.weight.copy_(head)


def check_scripted(model: Any, tok: Any) -> None:
    """Fail the build unless greedy decoding of a chat prompt replays the script."""
    import torch

    for thinking in (True, False):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            add_generation_prompt=True,
            enable_thinking=thinking,
            return_dict=True,
        )["input_ids"]
        x = torch.tensor([prompt])
        out = model.generate(x, max_new_tokens=12, do_sample=False)
        text = tok.decode(out[0, len(prompt) :], skip_special_tokens=True)
        if text != EXPECTED_SCRIPT:
            raise RuntimeError(f"scripted model replies {text!r}, not {EXPECTED_SCRIPT!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.vllm.tiny", description=__doc__)
    parser.add_argument("out", type=Path, help="model directory to (over)write")
    parser.add_argument("--scripted", action="store_true", help="the deterministic model")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    (build_scripted if args.scripted else build_random)(args.out)
    kind = "scripted" if args.scripted else "random"
    print(f"tiny: {kind} model in {args.out} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
