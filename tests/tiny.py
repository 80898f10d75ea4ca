"""Tiny models and a tokenizer built in code: nothing is downloaded from the Hub in tests."""

from __future__ import annotations

import functools

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Medusa heads propose several future tokens at once.",
    "Tree attention verifies candidates in one forward pass.",
    "You are a helpful assistant. Answer the question briefly.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "1 2 3 4 5 6 7 8 9 10 + - * / = ( ) [ ] { } ? ! , . : ;",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) with a ChatML chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    return fast


FAMILIES = ("llama", "mistral", "qwen2", "gemma")


def tiny_config(family: str = "llama", vocab_size: int = 512, hidden_size: int = 64, layers: int = 2):
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        tie_word_embeddings=False,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=2,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if family == "gemma":
        return GemmaConfig(**common, head_dim=16)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, **kw):
    """A random tiny causal LM in fp32, eval mode, frozen."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw), dtype=torch.float32)
    # Sharper random logits: more decisive greedy continuations, closer to a trained model's behaviour.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    return model.eval().requires_grad_(False)


def greedy_continuations(model, prompts: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
    """model.generate(do_sample=False) on each prompt [1, L] -> the new tokens [N] of each."""
    outs = []
    for ids in prompts:
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outs.append(out[0, ids.shape[1] :])
    return outs


def fit_oracle_heads(
    model,
    sequences: list[torch.Tensor],
    num_heads: int = 3,
    steps: int = 300,
    seed: int = 0,
    head_type: str = "medusa",
):
    """Heads fitted (memorised) on the model's own greedy sequences [N]: an oracle so that tree decoding
    accepts several tokens per step in tests. Own-projection layout, Adam on the Medusa loss; sequential heads
    read the true path tokens (teacher forcing)."""
    from infer.draft.heads import MedusaConfig, MedusaHeads

    torch.manual_seed(seed)
    cfg = model.config
    heads = MedusaHeads(
        MedusaConfig(
            hidden_size=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
            medusa_num_heads=num_heads,
            layout="own_lm_head",
            head_type=head_type,
        )
    )
    heads.init_from_lm_head(model.get_output_embeddings())
    embed = model.get_input_embeddings()
    with torch.no_grad():
        feats, targets = [], []
        for seq in sequences:
            hidden = model.get_decoder()(input_ids=seq[None]).last_hidden_state[0]  # [T, H]
            emb = embed(seq)  # [T, H]
            T = seq.shape[0]
            for k in range(num_heads):
                n = T - k - 2
                if n > 0:
                    path = torch.stack([emb[1 + j : 1 + j + n] for j in range(k + 1)], 1)  # [n, k+1, H]
                    feats.append((k, hidden[:n], path))
                    targets.append(seq[k + 2 : k + 2 + n])
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = 0.0
        for (k, h, path), y in zip(feats, targets):
            logits = heads.head_logits(k, h, None, path if heads.sequential else None)
            loss = loss + torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval().requires_grad_(False)


def oracle_setup(
    family: str, num_prompts: int, new_tokens: int, seed: int, min_len: int = 3, max_len: int = 20
):
    """A tiny random model of ``family``, prompts [1, L] of random lengths, their greedy continuations and heads
    partly fitted to them (many tokens accepted, yet rejections still happen): the lossless-decoding fixture."""
    model = tiny_model(family, seed=FAMILIES.index(family))
    g = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(3, 512, (1, int(torch.randint(min_len, max_len, (1,), generator=g))), generator=g)
        for _ in range(num_prompts)
    ]
    conts = greedy_continuations(model, prompts, new_tokens)
    heads = fit_oracle_heads(
        model, [torch.cat([p[0], c]) for p, c in zip(prompts, conts)], num_heads=3, steps=60
    )
    return family, model, heads, prompts, conts


def sequential_oracle(oracle):
    """The same model, prompts and continuations as an ``oracle_setup`` fixture, with sequential (path-conditioned)
    oracle heads."""
    family, model, _, prompts, conts = oracle
    sequences = [torch.cat([p[0], c]) for p, c in zip(prompts, conts)]
    heads = fit_oracle_heads(model, sequences, num_heads=3, steps=60, head_type="sequential")
    return family, model, heads, prompts, conts
