from rewards import StepReward
from rl.process_rewards import token_rewards
from rollout import Trajectory


def test_chunk_values_land_on_the_step_that_finished_each_chunk(tokenizer):
    text = "12\n\n34"
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    # tokens: '1' '2' '\n' '\n' '3' '4' EOS, decoded at these steps:
    steps = [3, 0, 1, 4, 2, 5, 6]
    t = Trajectory(prompt_ids=[5], completion_ids=ids, step_map=steps, logprobs=[0.0] * 7, block_size=None,
                   temperature=1.0, nfe=7, finish_reason="eos", text=text)
    r = StepReward.from_text(text, [1.0, 10.0])  # chunks "12\n\n" (ends 4) and "34" (ends 6)
    out = token_rewards(t, outcome=100.0, steps=r, tokenizer=tokenizer)
    # chunk 1 = tokens 0-3, finished at step 4 (token 3); chunk 2 = tokens 4-5, finished at step 5 (token 5);
    # the outcome goes to the last trace step, step 6 (the EOS token).
    assert out == [0.0, 0.0, 0.0, 1.0, 0.0, 10.0, 100.0]
    assert token_rewards(t, 2.0, None, tokenizer) == [0.0] * 6 + [2.0]
