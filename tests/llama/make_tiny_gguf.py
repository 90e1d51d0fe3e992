"""Write a tiny random-weight llama-architecture GGUF model (~460 KB) that llama.cpp loads.

No download: the weights are random with a fixed seed (the same bytes every run) and the
tokenizer is a GPT-2 style byte-level BPE vocabulary (256 byte tokens, a few merges, BOS, EOS).

The output head is rigged through a "bias channel" (embedding dimension 0 is a constant 1.0,
so column 0 of output.weight acts as a per-token bias): the model emits only lowercase ASCII
letters and spaces (always valid UTF-8) and never EOS, so every generation ends on its token
limit (finish_reason "length"). With `eos_after="m"`, EOS follows an "m"; greedy output falls
into "mmmm..." at once, so a generation ends by itself after a few tokens (finish_reason "stop").

usage: python tests/llama/make_tiny_gguf.py OUT.gguf [--seed 0] [--eos-after m]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX_TRAIN = 64, 4, 4, 128, 2, 2048
HEAD_DIM = N_EMBD // N_HEAD
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "e r")  # a few real BPE merges, so merging is exercised
CHAT_TEMPLATE = (  # ChatML-like, as plain text (no special tokens)
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% elif m['content'] %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
    "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character (what llama.cpp expects)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def write_model(out: Path, *, seed: int = 0, eos_after: str | None = None) -> Path:
    """Write the model to `out`; with `eos_after` (one letter) it can end a generation."""
    if eos_after is not None and not (len(eos_after) == 1 and "a" <= eos_after <= "z"):
        raise ValueError(f"eos_after must be one lowercase letter, not {eos_after!r}")
    rng = np.random.default_rng(seed)

    byte_chars = _bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    bos_id, eos_id = len(tokens), len(tokens) + 1
    tokens += ["<|bos|>", "<|eos|>"]
    types += [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(list(MERGES))
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)  # /v1/embeddings: one flat vector per input
    w.add_chat_template(CHAT_TEMPLATE)

    def rnd(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # A numpy shape is (rows, cols), the reverse of ggml's ne: token_embd has ne={n_embd,n_vocab}.
    emb = rnd(n_vocab, N_EMBD, std=0.1)
    emb[:, 0] = 1.0  # the constant bias channel
    w.add_tensor("token_embd.weight", emb)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(p + "attn_q.weight", rnd(N_HEAD * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rnd(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rnd(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rnd(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", rnd(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))

    head = rnd(n_vocab, N_EMBD, std=0.5)
    favoured = {*range(ord("a"), ord("z") + 1), ord(" ")}
    head[:, 0] = [1.0 if t in favoured else -1.0 for t in range(n_vocab)]
    head[eos_id, 0] = -1.0  # EOS never wins ...
    if eos_after is not None:  # ... except right after that letter
        e = emb[ord(eos_after), 1:]
        head[eos_id, 0] = 1.0
        head[eos_id, 1:] = 2.0 * e / np.linalg.norm(e)
    w.add_tensor("output.weight", head)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="tiny.gguf", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eos-after", metavar="CHAR", help="emit EOS right after this letter (e.g. m)")
    args = ap.parse_args()
    write_model(args.out, seed=args.seed, eos_after=args.eos_after)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
