"""The evaluation protocol: per-benchmark seeds and per-problem random streams, the sampling settings, and the
record of versions, grader and sampling written into every results.json."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

from tina.eval.candidates import sha256_files, weight_files
from tina.eval.options import EvalOptions
from tina.eval.swap import MERGE_SIGNAL_FRACTION, MERGE_TOLERANCE
from tina.rollout.base import Sampling


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import tina

    out = {"tina": tina.__version__, "python": platform.python_version()}
    for dist in ("transformers", "torch", "peft", "math-verify", "numpy", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def grader_digest() -> str:
    """sha256 of the grader's source files: a changed grader gives a different digest in results.json."""
    import tina.grading

    h = hashlib.sha256()
    for path in sorted(Path(tina.grading.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- generation
def benchmark_seed(seed: int, benchmark: str) -> int:
    """The sampling seed of one benchmark under a user seed: ``row_seed(seed, first 7 bytes of sha256(name))``.

    Every model gets the same streams on a benchmark (paired comparisons compare like with like), while problem i
    of two benchmarks does not share its random stream.  Completion j of problem i draws from
    ``row_seed(0, row_seed(benchmark_seed, i), j)`` (tina.rollout.sampling; :func:`stream_key`), whatever the batch
    size, the engine's batching, the number of processes or an interruption.

    >>> benchmark_seed(0, "aime24") == benchmark_seed(0, "aime24") != benchmark_seed(0, "aime25")
    True
    """
    from tina.rollout.sampling import row_seed

    return row_seed(seed, int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:7], "big"))


def stream_key(seed: int, benchmark: str, problem: int) -> int:
    """The key of problem ``problem`` of a benchmark under a user seed (one engine call can hold every seed)."""
    from tina.rollout.sampling import row_seed

    return row_seed(benchmark_seed(seed, benchmark), problem)


def eval_sampling(opts: EvalOptions) -> Sampling:
    """What every completion of an evaluation samples: exactly the flags (``--temperature 0``: greedy), nothing else.

    Greedy decoding keeps temperature 1 inside the engine: it only scales the log-probabilities reported with the
    tokens, and dividing the logits by 0 would turn them into inf/nan (whose argmax is garbage).

    >>> eval_sampling(EvalOptions(temperature=0)).temperature, eval_sampling(EvalOptions(temperature=0)).greedy
    (1.0, True)
    """
    greedy = opts.temperature == 0
    return Sampling(
        n=opts.samples,
        max_new_tokens=opts.max_new_tokens,
        temperature=1.0 if greedy else opts.temperature,
        top_p=1.0 if greedy else opts.top_p,
        top_k=0,
        greedy=greedy,
        seed=0,
    )


def protocol(opts: EvalOptions, model_name: str, server) -> dict:
    """The protocol block shared by every (model, benchmark) entry of results.json."""
    from tina.models import base_weights_digest, resolve_model_path

    model = server.model
    return {
        "model": model_name,
        "model_path": resolve_model_path(model_name) if model_name.startswith("builtin:") else model_name,
        "model_revision": getattr(model.config, "_commit_hash", None) if model is not None else None,
        "base_weights_sha256": base_weights_digest(model) if model is not None else None,
        "base_files_sha256": None if model is not None else sha256_files(server.path, weight_files(server.path)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else opts.dtype,
        "device": str(next(model.parameters()).device) if model is not None else "vllm",
        "engine": server.engine_name,
        "adapters": (
            "merged into float32 weights, checked against the unmerged model (max relative logit "
            f"difference {MERGE_TOLERANCE:g}, and at most {MERGE_SIGNAL_FRACTION:g} x the adapter's own "
            "effect on the logits); base restored exactly between adapters"
        )
        if opts.merge_adapters
        else "unmerged LoRA (never merged into the weights)",
        "chat_template": opts.template,
        "chat_template_sha256": hashlib.sha256(
            (getattr(server.tokenizer, "chat_template", None) or "").encode()
        ).hexdigest(),
        "sampling": _sampling_protocol(opts, server),
        "grader": {
            "name": "tina.grading",
            "source_sha256": grader_digest(),
            "timeout_seconds": opts.grader_timeout,
            "extraction": "lenient (boxed, then answer phrases, then the last math span, final answer part "
            "only); hedged and unfinished (truncated or thinking never closed) answers are wrong",
            "ungradable": "counted as incorrect in mean/pass@k; reported as n_ungradable",
        },
        "statistics": {
            "ci": "95% percentile bootstrap over problems",
            "resamples": opts.bootstrap_resamples,
            "pass_at_k": "unbiased (Chen et al. 2021) over samples x seeds",
            "bootstrap_seed": 0,
        },
        "versions": library_versions(),
    }


def _sampling_protocol(opts: EvalOptions, server) -> dict:
    """The sampling settings as run: the flags, what the engine applied, and where each completion's randomness is."""
    sampling = eval_sampling(opts)
    return {
        "samples": opts.samples,
        "seeds": list(opts.seeds),
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "top_k": sampling.top_k,
        "max_new_tokens": opts.max_new_tokens,
        "greedy": sampling.greedy,
        "batch_size": opts.batch_size,
        "processors": sampling.protocol()["processors"],
        "generation_config": "not applied: no repetition penalty, n-gram blocking, top-k or minimum length from "
        "the model folder; only its end-of-sequence ids",
        "eos_token_ids": server.eos_ids,
        "streams": server.streams,  # each engine says where its randomness comes from
    }
