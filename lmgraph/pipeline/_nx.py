"""The only module that imports networkx (lazily: it costs ~0.1 s to import)."""

from __future__ import annotations

from collections.abc import Iterable


def topo_order(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Return (a stable topological order, the cycles found). Order is empty if cycles exist."""
    import networkx as nx

    g = nx.DiGraph()
    names = list(nodes)
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    if nx.is_directed_acyclic_graph(g):
        rank = {n: i for i, n in enumerate(names)}
        return list(nx.lexicographical_topological_sort(g, key=rank.__getitem__)), []
    return [], [list(c) for c in nx.simple_cycles(g)]


def critical_path(nodes: Iterable[str], edges: Iterable[tuple[str, str]], weight: dict[str, float]) -> float:
    """Length of the longest weighted path (a lower bound on wall time with unlimited concurrency)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    best: dict[str, float] = {}
    for n in nx.topological_sort(g):
        best[n] = weight.get(n, 0.0) + max((best[p] for p in g.predecessors(n)), default=0.0)
    return max(best.values(), default=0.0)
