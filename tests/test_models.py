import torch
from transformers import AutoTokenizer

from rollout import load_model
from rollout.attention import block_attention_allowed

from .conftest import tiny_lm


def test_tokenizer_roundtrip_and_special_tokens(tokenizer, tmp_path):
    ids = tokenizer("047+385=")["input_ids"]
    assert len(ids) == 8 and tokenizer.decode(ids) == "047+385="
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("047+385=")["input_ids"] == ids
    assert again.mask_token_id == tokenizer.mask_token_id != again.eos_token_id
    assert again.decode(ids + [again.eos_token_id], skip_special_tokens=True) == "047+385="


def test_block_attention_rules():
    # clean positions 0..5 (blocks of 2), then a noisy copy of positions 2..5
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 2, 3, 4, 5]])
    noisy = torch.tensor([[0] * 6 + [1] * 4]).bool()
    allowed = block_attention_allowed(pos // 2, noisy, torch.ones_like(noisy))[0]
    assert allowed[0, 1] and not allowed[1, 2]  # bidirectional in a block, causal across blocks
    assert allowed[8].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # noisy block 2: clean blocks 0-1 + itself
    assert allowed[6].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0]  # noisy block 1 never sees clean block 1
    assert not allowed[:6, 6:].any()  # clean tokens never see noisy ones


def test_block_causal_logits_ignore_later_blocks(tokenizer):
    lm = tiny_lm(tokenizer, block_size=4)
    x = torch.randint(3, 20, (1, 12))
    sel = torch.arange(0, 8)[None]
    base = lm.sequence_logits(x, sel)
    later = x.clone()
    later[0, 9] = 25  # a token in block 2
    assert torch.allclose(lm.sequence_logits(later, sel), base)
    same = x.clone()
    same[0, 6] = 25  # a token in block 1 changes block 1's logits, not block 0's
    out = lm.sequence_logits(same, sel)
    assert torch.allclose(out[0, :4], base[0, :4])
    assert not torch.allclose(out[0, 4:8], base[0, 4:8])


def test_save_and_load_keeps_family_block_size_and_outputs(tokenizer, tmp_path):
    lm = tiny_lm(tokenizer, block_size=2, double=False)
    lm.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert again.block_size == 2 and again.family.name == "block" and again.mask_id == tokenizer.mask_token_id
    x = torch.randint(3, 20, (2, 6))
    sel = torch.arange(6).expand(2, 6)
    assert torch.allclose(again.sequence_logits(x, sel), lm.sequence_logits(x, sel), atol=1e-6)


def test_sampling_logprobs_exclude_mask_and_apply_temperature(lm):
    logits = torch.randn(3, lm.model.config.vocab_size, dtype=torch.float64)
    lp = lm.sampling_logprobs(logits, 0.5)
    assert torch.isinf(lp[:, lm.mask_id]).all()
    ref = torch.log_softmax(torch.cat([logits[:, : lm.mask_id], logits[:, lm.mask_id + 1 :]], 1) / 0.5, -1)
    keep = [i for i in range(logits.shape[1]) if i != lm.mask_id]
    assert torch.allclose(lp[:, keep], ref, atol=1e-12)


def test_native_gqa_attention_gives_stock_sdpa_logits_and_gradients_without_copying_the_cache(tokenizer, monkeypatch):
    # The tiny LM has 4 query heads over 2 key/value heads. Stock "sdpa" repeats the kv heads
    # before a masked kernel; unmask's attention lets the CPU kernel do GQA: same numbers.
    from transformers.integrations import sdpa_attention

    from rollout.attention import SDPA_GQA

    lm = tiny_lm(tokenizer, double=False)
    assert lm.model.config._attn_implementation == SDPA_GQA
    assert lm.model.config.num_key_value_heads < lm.model.config.num_attention_heads
    x = torch.randint(3, 20, (3, 12))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[0, :4] = False  # left padding in one row
    pos = torch.arange(12).expand(3, -1)
    allowed = block_attention_allowed(pos // 4, torch.zeros_like(valid), valid)
    select = torch.arange(12).expand(3, -1)

    def logits_and_grad(impl):
        lm.model.set_attn_implementation(impl)
        lm.model.zero_grad()
        out = lm.forward_logits(x, pos, allowed, select)
        out.float().logsumexp(-1)[valid].sum().backward()
        return out.detach(), lm.model.model.layers[0].self_attn.k_proj.weight.grad.clone()

    copies = []
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda h, n: copies.append(h.shape) or h.repeat_interleave(n, dim=1))
    ours, our_grad = logits_and_grad(SDPA_GQA)
    assert copies == []  # no key/value head was copied
    stock, stock_grad = logits_and_grad("sdpa")
    assert len(copies) == 2 * lm.model.config.num_hidden_layers  # stock copies keys and values of every layer
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grad, stock_grad, atol=1e-5, rtol=1e-4)
    assert our_grad.abs().sum() > 0
