"""The one data layer: `unmask train`, `unmask sft`, `eval.benchmarks` and `unmask eval` all load through it.

- files.py: local files, globs, save_to_disk directories and hub datasets -> rows (errors name file and line)
- presets.py: the common formats (math, gsm8k, code, mbpp, humaneval, gym, arithmetic): fields, templates, rewards, SFT targets
- prompts.py: templates filled from a row; chat templates; token ids
- sources.py: one configured source -> training and held-out examples (every row checked before training)
- stream.py: the examples of each step, mixed by weight, shuffled per epoch, a pure function of (seed, step)
- benchmarks.py: a source read whole and scored, for evaluation
"""

from rl.data.benchmarks import Benchmark, BenchmarkRequest, load_benchmark, parse_benchmark
from rl.data.files import BenchmarkError, DataError, read_records, read_where
from rl.data.presets import PRESETS, Preset, Template, get_preset, register_preset
from rl.data.prompts import encode_messages, encode_prompt, render
from rl.data.sources import Example, Source, load_source
from rl.data.stream import PromptStream

__all__ = [
    "Benchmark", "BenchmarkError", "BenchmarkRequest", "DataError", "Example", "PRESETS", "Preset", "PromptStream", "Source",
    "Template", "encode_messages", "encode_prompt", "get_preset", "load_benchmark", "load_source", "parse_benchmark",
    "read_records", "read_where", "register_preset", "render",
]
