"""`unmask sft` on datasets: response-only loss, chat data with a BPE tokenizer, checkpoints and exact resume, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rl.config import SFTConfig
from rl.data import DataError
from rl.sft import SFTRun, run_sft

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64, "block_size": 4}


def _rows(path, n=24):
    rows = [{"id": str(i), "question": f"{i:02d}+{i:02d}=", "answer": f"{2 * i:03d}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path, **over):
    data = {"sources": [{"path": str(_rows(tmp_path / "sums.jsonl")), "prompt": "question", "response": "answer",
                         "columns": ["answer"], "rewards": [{"name": "arithmetic"}], "heldout": {"size": 4}, "max_new_tokens": 5}]}  # fmt: skip
    return SFTConfig.model_validate({"arch": TINY, "data": data, "steps": 4, "batch_size": 8, "eval_every": 2, "eval_size": 4,
                                     "output_dir": str(tmp_path / "out"), "threads": 1, **over})  # fmt: skip


def _masked_response_nll(lm, prompt, completion, masked):
    """-log p of each masked completion token, re-derived with plain forwards: for each block, the
    input is the prompt and the earlier blocks clean, then that block's completion tokens with
    the masked ones replaced by the mask id (later blocks absent), under a block-causal additive
    mask; read at the masked positions (an aligned family: a position predicts its own token)."""
    bs, plen, out = lm.block_size, len(prompt), []
    blocks = sorted({(plen + c) // bs for c in range(len(completion))})
    for b in blocks:
        cols = [c for c in range(len(completion)) if (plen + c) // bs == b]
        seq = list(prompt) + [lm.mask_id if (c in cols and masked[c]) else t for c, t in enumerate(completion[: cols[-1] + 1])]
        x = torch.tensor([seq])
        pos = torch.arange(len(seq))
        allowed = (pos[None, :] // bs) <= (pos[:, None] // bs)
        add = torch.zeros(allowed.shape, dtype=lm.model.dtype).masked_fill(~allowed, torch.finfo(lm.model.dtype).min)[None, None]
        logits = lm.model(input_ids=x, position_ids=pos[None], attention_mask=add).logits[0].double()
        logits[:, lm.mask_id] = float("-inf")  # the sampling distribution never emits the mask id
        logits[:, lm.num_tokens :] = float("-inf")
        lp = torch.log_softmax(logits, -1)
        out += [-lp[plen + c, completion[c]] for c in cols if masked[c]]
    return out


def test_loss_is_on_response_tokens_only(tmp_path, monkeypatch):
    import algorithms.sft

    run = SFTRun(_cfg(tmp_path))
    batch = run.stream.batch(0, 8)
    seen = {}
    real = run.lm.sampling_logprobs

    def spy(logits, temperature):
        seen["width"] = logits.shape[1]
        return real(logits, temperature)

    masks = []
    real_mask = algorithms.sft.random_block_mask

    def mask_spy(prompt_len, completion_len, block_size, generator, **traits):
        masks.append(real_mask(prompt_len, completion_len, block_size, generator, **traits))
        return masks[-1]

    monkeypatch.setattr(run.lm, "sampling_logprobs", spy)
    monkeypatch.setattr(algorithms.sft, "random_block_mask", mask_spy)
    loss, m = run.loss(batch)
    # Only completion positions are scored: 3 digits + EOS, filled with EOS to the block boundary at position 12
    # (the prompt's 6 tokens end mid-block), never the prompt.
    assert all(len(ex.prompt_ids) == 6 for ex in batch) and seen["width"] == 12 - 6
    # The loss is the mean NLL over the masked response tokens alone, each predicted from its
    # block's noisy state: re-derived here with one plain forward per block.
    tok, eos = run.lm.tokenizer, run.lm.eos_id
    assert len(masks) == len(batch) and all(len(mk) == 6 for mk in masks)
    nll = []
    with torch.no_grad():
        for ex, mk in zip(batch, masks):
            completion = tok(ex.response, add_special_tokens=False)["input_ids"] + [eos] * 3  # "ddd" + EOS + 2 filler EOS
            assert len(completion) == 6
            nll += _masked_response_nll(run.lm, ex.prompt_ids, completion, mk)
    assert 0 < len(nll) < 6 * len(batch)  # some response tokens are left clean: they carry no loss
    assert loss.item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-5)

    # The AR objective: the loss equals the hand-computed next-token NLL over response tokens alone.
    ar = SFTRun(_cfg(tmp_path, objective="ar"))
    ex = ar.stream.batch(0, 1)[0]
    loss, _ = ar.loss([ex])
    resp = ar._response_ids(ex)
    ids = torch.tensor([ex.prompt_ids + resp])
    logp = torch.log_softmax(ar.lm.model(input_ids=ids).logits[0, :-1].float(), -1)
    p = len(ex.prompt_ids)
    want = -torch.stack([logp[p - 1 + j, t] for j, t in enumerate(resp)]).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    run_sft(_cfg(tmp_path, save_every=2), straight)
    cut = tmp_path / "cut"
    run_sft(_cfg(tmp_path, save_every=2, steps=2), cut)
    summary = run_sft(_cfg(tmp_path, save_every=2), cut, resume=True)  # continues at step 2 with optimizer, schedule and mask RNG
    a, b = load_file(straight / "model.safetensors"), load_file(cut / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in summary["history"]] == [2, 4] and 0.0 <= summary["heldout_accuracy"] <= 1.0
    assert len((cut / "metrics.jsonl").read_text().splitlines()) == 4
    with pytest.raises(FileNotFoundError, match="no SFT checkpoint"):
        SFTRun(_cfg(tmp_path), tmp_path / "empty", resume=True)


def test_chat_messages_with_a_bpe_tokenizer_from_scratch(tmp_path):
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"\\boxed{{{2 * i}}}"}],
             "answer": str(2 * i)} for i in range(30)]  # fmt: skip
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"sources": [{"path": str(f), "prompt": "messages", "columns": ["answer"], "rewards": [{"name": "math"}], "heldout": {"size": 4},
                         "system_prompt": "Answer in a box.", "max_new_tokens": 8}]}  # fmt: skip
    cfg = SFTConfig.model_validate({"arch": TINY, "tokenizer": {"kind": "bpe", "vocab_size": 300}, "data": data, "steps": 2, "batch_size": 4,
                                    "eval_every": 2, "eval_size": 4, "threads": 1})  # fmt: skip
    run = SFTRun(cfg, tmp_path / "out")
    ex = run.stream.batch(0, 1)[0]
    tok = run.lm.tokenizer
    assert tok.decode(ex.prompt_ids) == f"<|im_start|>system\nAnswer in a box.<|im_end|>\n<|im_start|>user\n{ex.prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert ex.response.startswith("\\boxed{") and run._response_ids(ex)[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    run.train()
    from rollout.models import load_model

    lm = load_model(tmp_path / "out")
    assert lm.tokenizer.chat_template and lm.mask_id == tok.mask_token_id == 3


def test_rows_without_a_response_are_an_error_before_training(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.data.sources[0].response = None  # preset none: nothing says what the model should answer
    with pytest.raises(DataError, match=r"sums.jsonl:line \d+: source 'sums' has no response for this row"):
        SFTRun(cfg)
    bad = _cfg(tmp_path)
    bad.data.sources[0].template = "{question} = ?"
    bad.data.sources[0].prompt = None
    (tmp_path / "sums.jsonl").write_text(json.dumps({"id": "0", "question": "1+1=é", "answer": "002"}) + "\n" * 2)
    bad.data.sources[0].heldout.size = None
    with pytest.raises(DataError, match="not in the char tokenizer; use tokenizer: {kind: bpe}"):
        SFTRun(bad)
