import torch

from algorithms.sft import ar_sft_loss
from rl.evaluate import evaluate_task, load_policy
from rl.tasks import ArithmeticTask
from rollout import SamplingParams
from rollout.autoregressive import ARModel, is_ar_checkpoint
from rollout.models import build_tiny_lm


def test_ar_baseline_trains_saves_loads_and_evaluates(tokenizer, tmp_path):
    torch.manual_seed(0)
    ar = ARModel(build_tiny_lm(tokenizer, hidden_size=64, num_layers=2, intermediate_size=128).model, tokenizer)
    opt = torch.optim.AdamW(ar.model.parameters(), lr=3e-3)
    prompts = [tokenizer("1+1=")["input_ids"], tokenizer("2+2=")["input_ids"]]
    answers = [tokenizer("02")["input_ids"] + [ar.eos_id], tokenizer("04")["input_ids"] + [ar.eos_id]]
    for _ in range(60):
        loss, _ = ar_sft_loss(ar.model, prompts, answers, ar.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = ar.generate(prompts, max_new_tokens=6)
    assert [t.text for t in out] == ["02", "04"]
    assert all(t.finish_reason == "eos" and t.nfe == 3 and t.step_map == [0, 1, 2] for t in out)
    # log-probs are those of the greedy path under the model: all close to 0 after fitting
    assert all(-0.2 < lp <= 0 for t in out for lp in t.logprobs)

    ar.save_pretrained(tmp_path)
    assert is_ar_checkpoint(tmp_path)
    again = load_policy(tmp_path)
    assert isinstance(again, ARModel)
    rows = [{"prompt": "1+1=", "answer": "02"}, {"prompt": "2+2=", "answer": "04"}]
    res = evaluate_task(again, ArithmeticTask(digits=1), rows, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert res["accuracy"] == 1.0 and res["tokens_per_forward"] == 1.0


def test_ar_left_padding_does_not_change_outputs(tokenizer):
    ar = ARModel(build_tiny_lm(tokenizer, hidden_size=64, num_layers=2, intermediate_size=128).model.double(), tokenizer)
    p = [tokenizer("12+34=")["input_ids"], tokenizer("5+6=")["input_ids"]]
    batch = ar.generate(p, max_new_tokens=5)
    for prompt, t in zip(p, batch):
        assert ar.generate([prompt], max_new_tokens=5)[0].completion_ids == t.completion_ids
