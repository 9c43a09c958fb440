"""Which dtype ``auto`` should pick on this CPU: ``python -m benchmarks.dtype_speed [--tokens 128] [--runs 5]``.

Times one forward pass of the embedded model over TOKENS tokens in bf16 and in
fp32, alternating the two (``measure``), one torch thread, and prints one JSON
line: the medians, their ratio, whether the CPU has native bf16 (AMX or
AVX512-BF16, :func:`lora_memory.base.native_bf16`) and what ``auto`` resolves to.
On CPUs without native bf16 its matmuls are emulated, and fp32 is the faster one.
"""

from __future__ import annotations

import argparse
import json

import torch

from lora_memory.base import load_base_model, native_bf16, resolve_dtype
from lora_memory.evaluation.machine import machine_info

from .common import measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    models = {name: load_base_model("embedded", dtype=name, device="cpu").model for name in ("bf16", "fp32")}
    ids = torch.randint(100, 10_000, (1, args.tokens), generator=torch.Generator().manual_seed(0))

    def forward(name: str) -> None:
        with torch.no_grad():
            models[name](input_ids=ids)

    stats = measure({name: (lambda n=name: forward(n)) for name in models}, runs=args.runs, warmup=1)
    print(json.dumps({
        "machine": machine_info(), "tokens": args.tokens, "runs": args.runs,
        "median_s": {n: round(s.median, 4) for n, s in stats.items()},
        "bf16_over_fp32": round(stats["bf16"].median / stats["fp32"].median, 2),
        "native_bf16": native_bf16(cpu), "auto": str(resolve_dtype("auto", cpu)).removeprefix("torch."),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
