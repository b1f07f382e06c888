"""``torchrun -m refcocog_tools evaluate``: two gloo processes write the single-process file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from refcocog_tools.cli.main import main as cli_main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one(tmp_path, mini_data, isolated_cache) -> None:
    common = ["evaluate", "--data-root", str(mini_data), "--method", "red-circle",
              "--clip", "tiny-rn", "--limit", "12", "--n-debias", "30", "--quiet"]
    single = tmp_path / "single.json"
    assert cli_main(common + ["--out", str(single)]) == 0
    cache_file = next((isolated_cache / "embeddings").rglob("image.pt"))
    cache_file.unlink()  # the distributed run must compute, not read, the image embeddings

    out = tmp_path / "multi.json"
    env = {**os.environ, "REFCOCOG_TOOLS_CACHE": str(isolated_cache), "OMP_NUM_THREADS": "1",
           "YOLO_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(_free_port()), "-m", "refcocog_tools", *common,
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Only rank 0 reports.
    assert done.stdout.count("results written to") == 1

    a, b = json.loads(single.read_text()), json.loads(out.read_text())
    assert b["timing"]["world_size"] == 2 and a["timing"]["world_size"] == 1
    assert a["predictions"] == b["predictions"] and len(a["predictions"]) == 12
    assert {k: v for k, v in a.items() if k != "timing"} == \
        {k: v for k, v in b.items() if k != "timing"}
    assert cache_file.exists()  # rank 0 saved its share of the cache ...
    shard = cache_file.with_name("image.rank1.pt")
    assert shard.exists()  # ... and rank 1 its own
    # A later single-process run reads both shards: every image embedding is a cache hit.
    from refcocog_tools.models.prompt_cache import EmbeddingCache

    merged = EmbeddingCache(isolated_cache / "embeddings")
    checksum = json.loads(single.read_text())["provenance"]["clip"][0]["checksum"]
    rank0 = EmbeddingCache(isolated_cache / "embeddings")._load_file(cache_file, checksum)
    rank1 = EmbeddingCache(isolated_cache / "embeddings")._load_file(shard, checksum)
    assert rank0 and rank1 and not set(rank0) & set(rank1)  # images split between the ranks
    assert set(merged._table(checksum, "image")) == set(rank0) | set(rank1)
