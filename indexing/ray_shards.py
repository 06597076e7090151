"""Sharded serving on Ray: one actor per faiss shard, each holding only its part in memory; the query process
sends every query to all actors and merges their top-k (``engine serve --shard-backend ray``).

The actors read ``INDEX_DIR/faiss_shards/part-K.index`` themselves (so on a multi-node cluster the index folder
must be on a filesystem every node mounts at the same path) and answer unfiltered and filtered searches with the
same functions the in-process index uses (``indexing.faiss_search.search_batch_selected``), so a sharded index
answers exactly what faiss ``IndexShards`` over the same parts answers, which for Flat and IVF parts is what the
unsharded index answers. ``search_parameters`` / ``set_parameter`` reach every part (nprobe / efSearch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ConfigError

SEARCH_THREADS = 1  # one query at a time per actor; parallelism comes from the actors


def process_memory() -> dict[str, int]:
    """Resident and peak resident bytes of this process (Linux /proc; zeros elsewhere)."""
    values = {"rss_bytes": 0, "peak_rss_bytes": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                values["rss_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                values["peak_rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values


class ShardSearcher:
    """Ray actor: one faiss shard."""

    def __init__(self, path: str, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index = faiss.read_index(path)

    def info(self) -> dict:
        return {"ntotal": int(self.index.ntotal), "d": int(self.index.d), **process_memory()}

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from indexing.faiss_search import search_batch_selected

        if allowed is None:
            return self.index.search(queries, k)
        return search_batch_selected(self.index, queries, k, allowed)

    def set_parameter(self, name: str, value: int) -> None:
        import faiss

        faiss.ParameterSpace().set_index_parameter(self.index, name, value)

    def parameters(self) -> dict[str, int]:
        from indexing.faiss_search import search_parameters

        return search_parameters(self.index)


class RayShardedIndex:
    """Looks like a faiss index to the query engine (``d``, ``ntotal``, ``search``) but lives in Ray actors."""

    def __init__(self, actors: list, dim: int, counts: list[int], owned: bool) -> None:
        self.actors, self.d, self.counts, self.owned = actors, dim, counts, owned
        self.ntotal = sum(counts)

    @classmethod
    def start(cls, paths: list[Path], dim: int, address: str = "auto") -> "RayShardedIndex":
        from indexing.ray_index import connect, require_ray

        require_ray()
        import ray

        owned = connect(address)
        actor_class = ray.remote(ShardSearcher).options(num_cpus=0, max_restarts=3, max_task_retries=3)
        actors = [actor_class.remote(str(path), SEARCH_THREADS) for path in paths]
        try:
            infos = ray.get([actor.info.remote() for actor in actors])
        except ray.exceptions.RayError as error:
            raise ConfigError(f"{paths[0].parent}: a shard actor could not load its faiss shard "
                              f"({str(error).splitlines()[0]})") from None
        for path, info in zip(paths, infos):
            if info["d"] != dim:
                raise ConfigError(f"{path}: holds vectors of dim {info['d']}, index.json says {dim}")
        return cls(actors, dim, [info["ntotal"] for info in infos], owned)

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style (scores, ids), both (n, k); ``params`` other than None are refused (use search_selected)."""
        if params is not None:
            raise TypeError("RayShardedIndex.search: pass filters through search_selected")
        return self._search(queries, k, None)

    def search_selected(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search among ``allowed`` ids only; every actor filters its own part (indexing.faiss_search)."""
        return self._search(queries, k, np.ascontiguousarray(allowed, dtype=np.int64))

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        import ray

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        from indexing.faiss_search import merge_top_k

        answers = ray.get([actor.search.remote(queries, k, allowed) for actor in self.actors])
        return merge_top_k([scores for scores, _ in answers], [ids for _, ids in answers], k)

    def search_parameters(self) -> dict[str, int]:
        import ray

        return ray.get(self.actors[0].parameters.remote())

    def set_parameter(self, name: str, value: int) -> None:
        import ray

        ray.get([actor.set_parameter.remote(name, value) for actor in self.actors])

    def memory(self) -> list[dict]:
        """Per actor: ntotal, dim, resident and peak resident bytes."""
        import ray

        return ray.get([actor.info.remote() for actor in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.owned:
            ray.shutdown()
