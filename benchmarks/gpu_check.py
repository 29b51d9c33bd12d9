"""The GPU check: one prepared run of lmgraph's GPU backends on a machine with a CUDA device.

    python benchmarks/gpu_check.py [--out DIR] [--work DIR]

1. records the machine (``nvidia-smi``, Python, torch and CUDA, which of vllm / llama-cpp-python /
   transformers are importable, whether llama-cpp-python was built with GPU offload);
2. builds a tiny model from a random-initialised Llama config and a tokenizer trained here on
   lmgraph's own bundled text (``build_tiny_model``): no weights or tokenizer files are downloaded
   or carried. It needs torch and transformers for the weights, tokenizers for the tokenizer;
3. runs the ``gpu`` tests of ``tests/test_gpu_backends.py`` against it
   (``LMGRAPH_GPU_MODEL_DIR``; ``LMGRAPH_GPU_GGUF`` passes through for the llama.cpp offload test);
4. writes ``gpu-check.json`` (everything above, the pytest summary and each skip's reason) and
   ``gpu-check.log`` (pytest's output) into ``--out`` (default: ``$OUT`` when set, else
   ``benchmarks/results``).

What a test needs that the machine lacks makes it skip with the reason, recorded; the check itself
fails only when pytest reports a failure. See benchmarks/README.md, "GPU runs".
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SPECIAL = ["<unk>", "<s>", "</s>"]


def corpus_files() -> list[str]:
    """Text the tokenizer is trained on: lmgraph's bundled datasets and docs (all in the repository)."""
    files = sorted(str(p) for p in (ROOT / "lmgraph" / "data").rglob("*") if p.suffix in (".label", ".tsv", ".md"))
    return [*files, str(ROOT / "README.md")]


def build_tokenizer(out: pathlib.Path, vocab_size: int = 512) -> int:
    """A byte-level BPE tokenizer trained on :func:`corpus_files`, saved in Hugging Face layout
    (``tokenizer.json``, ``tokenizer_config.json`` with a chat template); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(corpus_files(), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True, "model_max_length": 512,
              "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, indent=1))
    return int(tok.get_vocab_size())


def build_tiny_model(out: pathlib.Path, seed: int = 0) -> dict[str, Any]:
    """A 2-layer Llama with random weights (seeded) and the tokenizer above, saved in ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = build_tokenizer(out)
    bos, eos = 1, 2  # SPECIAL's order
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False,
                         torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    return {"path": str(out), "vocab_size": vocab, "parameters": sum(p.numel() for p in model.parameters()),
            "seed": seed}


def _run(cmd: list[str], timeout: float = 60) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({type(exc).__name__}: {exc})"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "nvidia_smi": _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                                "--format=csv,noheader"])}
    for name in ("torch", "transformers", "tokenizers", "vllm", "llama_cpp"):
        info[name] = importlib.util.find_spec(name) is not None
    if info["torch"]:
        import torch

        info["torch_version"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["cuda_device"] = torch.cuda.get_device_name(0)
    if info["vllm"]:
        import vllm

        info["vllm_version"] = getattr(vllm, "__version__", "?")
    if info["llama_cpp"]:
        import llama_cpp

        info["llama_cpp_version"] = llama_cpp.__version__
        info["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--work", default=None, help="where the tiny model is built (default: a temp folder)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="lmgraph-gpu-check-"))
    record: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine()}
    env = dict(os.environ)
    try:
        record["model"] = build_tiny_model(work / "tiny-llama")
        env["LMGRAPH_GPU_MODEL_DIR"] = record["model"]["path"]
    except Exception as exc:  # recorded: the vLLM tests then skip, saying there is no model
        record["model"] = {"error": f"{type(exc).__name__}: {exc}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_gpu_backends.py"), "-m", "gpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (out / "gpu-check.log").write_text(log)
    summary = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    record["pytest"] = {"command": " ".join(cmd), "exit_code": proc.returncode,
                        "summary": summary[-1] if summary else "",
                        "skips": [line for line in log.splitlines() if line.startswith("SKIPPED")]}
    (out / "gpu-check.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0 if proc.returncode in (0, 5) else 1  # 5: every test deselected or none collected


if __name__ == "__main__":
    sys.exit(main())
