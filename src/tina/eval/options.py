"""`tina eval`'s options: what a user asks of an evaluation (models, benchmarks, samples, engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tina.eval.benchmarks import TINA_SIX


# ------------------------------------------------------------------------------------------------------ options
@dataclass
class EvalOptions:
    """Everything `tina eval` takes (the CLI fills it from its flags; Python callers build it directly)."""

    model: str | None = None  # hub id, folder or builtin:...; default: the run's / adapters' base model
    adapters: list[str] = field(default_factory=list)
    run: str | None = None  # evaluate every RUN/checkpoint-*
    benchmarks: list[str] = field(default_factory=lambda: list(TINA_SIX))
    samples: int = 1  # completions per problem and seed
    seeds: list[int] = field(default_factory=lambda: [0])
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 32768
    limit: int | None = None  # first N problems of each benchmark (and of the validation set)
    batch_size: int = 64  # sequences decoded at once: hf rows per decode batch; vllm max_num_seqs
    output_dir: str | None = None
    data_dir: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    template: str = "tokenizer"  # chat template (tina.prompts.TEMPLATE_NAMES)
    include_base: bool | None = None  # default: on with --run, off otherwise
    merge_adapters: bool = False  # hf: fold each adapter into float32 weights (checked); default: unmerged
    select_on: str | None = None  # validation JSONL or benchmark name
    select_prompt: str = "eval"  # "eval": Tina's math prompt; "train": the run's training format
    grader_timeout: float = 5.0
    bootstrap_resamples: int = 2000
    progress: bool = True
    overwrite: bool = False
    backend: str = "hf"  # hf | vllm
    resume: bool = False  # continue an interrupted evaluation from its samples.jsonl
    dry_run: bool = False  # print the expected token volume and time, generate nothing
    data_parallel: int = 1  # processes (one per GPU), each on a shard of the problems; results merged
    shard: tuple[int, int] | None = None  # (index, count): this process's share of the problems (set by data_parallel)
    data_parallel_of: int = 0  # recorded in the protocol when results are merged from shards
    gpu_memory_utilization: float = 0.9  # vllm
    max_model_len: int | None = None  # vllm: prompt + completion tokens (None: the model's maximum)
