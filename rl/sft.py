"""`unmask sft`: supervised training on prompt/response data, through the same data layer as RL.

Block models train with the block-diffusion loss (each block of the response noised on its own,
the prompt always clean), full-attention models with random masking over the response canvas,
AR baselines with next-token loss; in every case the loss is on response tokens only. A fresh
tiny model can be built for a char tokenizer or for a BPE tokenizer trained on the data, so a
CPU user can start from scratch on their own files.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from algorithms.sft import ar_sft_loss, pad_completion, sft_loss
from rl.checkpoint import resolve_model_ref
from rl.config import SFTConfig
from rl.data import Benchmark, DataError, PromptStream, load_source
from rl.data.names import source_name
from rl.data.sources import Example, Source
from rl.evaluate import evaluate_benchmark, load_policy
from rollout.autoregressive import ARModel
from rollout.engine import SamplingParams
from rollout.models import build_tiny_lm
from rollout.tokenizer import build_bpe_tokenizer, build_char_tokenizer


def build_tokenizer(cfg: SFTConfig, sources: list[Source]):
    """The tokenizer of a fresh model: a saved one, a char tokenizer, or a BPE trained on the sources' text."""
    t = cfg.tokenizer
    if t.path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(t.path)
        if tok.mask_token_id is None:
            raise DataError(f"tokenizer.path {t.path}: the tokenizer has no mask token; a diffusion LM needs one (add_special_tokens({{'mask_token': ...}}))")
        return tok
    if t.kind == "char":
        return build_char_tokenizer()
    texts = []
    for src in sources:
        rows = src.train if not src.infinite else src.draw(2000, cfg.seed, 0)
        for ex in rows:
            texts += [m["content"] for m in ex.messages] + ([ex.response] if ex.response else [])
    from rollout.tokenizer import CHATML_TEMPLATE

    texts += ["system\n", "user\n", "assistant\n"] * 50  # the chat template's role names: one token each, not letters
    return build_bpe_tokenizer(texts, vocab_size=t.vocab_size, chat_template=CHATML_TEMPLATE if t.chat_template else None)


def _check_chars(tok, sources: list[Source]) -> None:
    """The char tokenizer has no unknown token: a character outside it is an error naming the row."""
    vocab = tok.get_vocab()
    for src in sources:
        for ex in (src.train if not src.infinite else src.draw(64, 0, 0)):
            text = "".join(m["content"] for m in ex.messages) + (ex.response or "")
            bad = sorted({c for c in text if c not in vocab})
            if bad:
                raise DataError(f"{ex.loc}: characters {''.join(bad)!r} are not in the char tokenizer; use tokenizer: {{kind: bpe}} for real text")


class SFTRun:
    """One `unmask sft` run: construct, then `train()`."""

    def __init__(self, cfg: SFTConfig, output_dir: str | Path | None = None, resume: bool = False):
        self.cfg, self.out = cfg, Path(output_dir or cfg.output_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.sources = []
        for s in cfg.data.sources:  # reading and checking every row of a large file takes a while: say so first
            print(f"SFT data {source_name(s)}: reading and checking {s.path} ...")
            self.sources.append(load_source(s))
        ckpt = self._latest() if resume else None
        if resume and ckpt is None:
            raise FileNotFoundError(f"--resume: no SFT checkpoint under {self.out / 'checkpoints'}")
        self.ar = cfg.objective == "ar"
        if ckpt is not None:
            self.lm = load_policy(ckpt / "model", trust_remote_code=cfg.trust_remote_code)
        elif cfg.init:  # a model, step_N or run directory (its latest checkpoint), or a hub id
            print(f"SFT: loading {cfg.init} ...")
            self.lm = load_policy(resolve_model_ref(cfg.init), trust_remote_code=cfg.trust_remote_code)
        else:
            a = cfg.arch
            print(f"SFT: building a fresh {a.family} model ({cfg.tokenizer.kind} tokenizer"
                  + (", trained on the data" if cfg.tokenizer.kind == "bpe" and not cfg.tokenizer.path else "") + ") ...")
            tok = build_tokenizer(cfg, self.sources)
            if cfg.tokenizer.kind == "char" and not cfg.tokenizer.path:
                _check_chars(tok, self.sources)
            self.lm = build_tiny_lm(
                tok, family=a.family, block_size=a.block_size, hidden_size=a.hidden_size, num_layers=a.num_layers,
                num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, intermediate_size=a.intermediate_size, seed=cfg.seed,
            )  # fmt: skip
            if self.ar:  # same backbone, trained left to right with its stock causal mask
                self.lm = ARModel(self.lm.model, self.lm.tokenizer)
        if self.ar != isinstance(self.lm, ARModel):
            raise ValueError(f"objective={cfg.objective!r} does not match the checkpoint {cfg.init}")
        tok = self.lm.tokenizer
        self.stream = PromptStream(self.sources, tok, cfg.seed, cfg.data.shuffle, cfg.data.max_prompt_tokens)
        for src in self.sources:
            missing = next((ex for ex in src.train if ex.response is None), None)
            if missing is not None:
                raise DataError(f"{missing.loc}: source {src.name!r} has no response for this row: set response: COLUMN, a preset with an SFT target, or a final assistant message")
        # The family's traits (an ARModel has none: objective=ar reads no block grid).
        self.traits = None if self.ar else self.lm.traits
        self.canvas = cfg.max_response_tokens or max(s.max_new_tokens for s in self.sources)
        self.opt = torch.optim.AdamW(self.lm.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        warmup = max(1, cfg.steps // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.start, self.history, self.cut = 0, [], 0
        if ckpt is not None:
            self._load_state(ckpt)
        self.evals = [self._heldout_benchmark(s) for s in self.sources if s.heldout and s.rewards]
        print(f"SFT: {cfg.steps} steps of {cfg.batch_size} examples"
              + (f"; held-out greedy accuracy every {cfg.eval_every} steps on {sum(len(b.problems) for b in self.evals)} problems" if self.evals else ""))

    # -- data --------------------------------------------------------------------------------
    def _heldout_benchmark(self, src: Source) -> Benchmark:
        return Benchmark.from_source(src).head(self.cfg.eval_size)

    def _response_ids(self, ex: Example) -> list[int]:
        if ex.response_ids is None:  # once per example, not once per step it is drawn
            ex.response_ids = self.lm.tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        ids = ex.response_ids + [self.lm.eos_id]
        if self.traits is not None and self.traits.full_attention and len(ids) > self.canvas:
            self.cut += 1
            ids = ids[: self.canvas]
        return ids

    def loss(self, examples: list[Example]) -> tuple[torch.Tensor, dict]:
        """The objective on one batch: loss on response tokens only (prompts are context)."""
        prompts = [ex.prompt_ids for ex in examples]
        answers = [self._response_ids(ex) for ex in examples]
        if self.ar:
            return ar_sft_loss(self.lm.model, prompts, answers, self.lm.pad_id)
        t = self.traits
        completions = [
            pad_completion(len(p), a, t.block_size, self.canvas, self.lm.eos_id, full_attention=t.full_attention) for p, a in zip(prompts, answers)
        ]
        return sft_loss(self.lm, prompts, completions, self.gen)

    # -- checkpoints -------------------------------------------------------------------------
    def _latest(self) -> Path | None:
        root = self.out / "checkpoints"
        done = sorted(p for p in root.glob("step_*") if (p / "sft_state.pt").exists()) if root.exists() else []
        return done[-1] if done else None

    def save(self, step: int) -> Path:
        """model/ (transformers format) + sft_state.pt (optimizer, scheduler, mask RNG, torch RNG, step); the state file last."""
        path = self.out / "checkpoints" / f"step_{step:06d}"
        self.lm.save_pretrained(path / "model")
        buf = io.BytesIO()
        torch.save({"step": step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "generator": self.gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": self.history, "cut": self.cut}, buf)  # fmt: skip
        (path / "sft_state.pt").write_bytes(buf.getvalue())
        return path

    def _load_state(self, path: Path) -> None:
        state = torch.load(path / "sft_state.pt", weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.start, self.history, self.cut = state["step"], state["history"], state["cut"]
        print(f"resumed SFT from {path} (step {self.start})")

    # -- the loop ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy on each source's held-out split (scored by its reward)."""
        out = {}
        for b in self.evals:
            m, _ = evaluate_benchmark(self.lm, b, SamplingParams(max_new_tokens=b.max_new_tokens, temperature=0.0), batch_size=256)
            out[f"accuracy/{b.label}/heldout"] = m["pass@1"]
        if out:
            n = [len(b.problems) for b in self.evals]
            out["accuracy/heldout"] = sum(v * k for v, k in zip(out.values(), n)) / sum(n)
        return out

    def train(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_file = open(self.out / "metrics.jsonl", "a")
        bar = tqdm(range(self.start, cfg.steps), initial=self.start, total=cfg.steps, desc="SFT", unit="step")
        m = {"loss/sft": float("nan"), "masked_token_acc": float("nan")}
        for step in bar:
            self.lm.model.train()
            loss, m = self.loss(self.stream.batch(step, cfg.batch_size))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.lm.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            bar.set_postfix(loss=f"{m['loss/sft']:.3f}", tok_acc=f"{m['masked_token_acc']:.2f}")
            done = step + 1
            record = {"step": done, **m}
            if done % cfg.eval_every == 0 or done == cfg.steps:
                self.lm.model.eval()
                bar.set_postfix_str(f"step {done}: decoding the held-out problems ...")
                acc = self.evaluate()
                record.update(acc)
                self.history.append({"step": done, "loss": m["loss/sft"], "heldout_accuracy": acc.get("accuracy/heldout"), **acc})
                if acc:
                    tqdm.write(f"step {done}: loss {m['loss/sft']:.3f}, held-out greedy accuracy {acc['accuracy/heldout']:.3f}"
                               + "".join(f", {k.split('/')[1]} {v:.3f}" for k, v in acc.items() if k.count("/") == 2 and len(self.evals) > 1))  # fmt: skip
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
                self.save(done)
        bar.close()
        metrics_file.close()
        self.lm.model.eval()
        self.lm.save_pretrained(self.out)
        last = self.history[-1] if self.history else {}
        summary = {
            "output_dir": str(self.out), "wall_seconds": round(time.perf_counter() - t0, 1), "history": self.history,
            "heldout_accuracy": last.get("heldout_accuracy"), "responses_cut": self.cut, "config": cfg.model_dump(),
        }  # fmt: skip
        (self.out / "sft_summary.json").write_text(json.dumps(summary, indent=2))
        acc = last.get("heldout_accuracy")
        print(f"saved {self.out}" + (f" (held-out greedy accuracy {acc:.3f})" if acc is not None else ""))
        return summary


def run_sft(cfg: SFTConfig, output_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train, evaluate greedily on held-out problems every `eval_every` steps, save the model.

    The run is a pure function of the config (seeded init, data and masks), so the
    quickstart's base checkpoint can be rebuilt bit-for-bit on the same torch build.
    """
    return SFTRun(cfg, output_dir, resume).train()
